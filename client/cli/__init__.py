"""The `kvmplat` command line: global options and exit codes (main), the subcommands, and how messages are shown."""
