"""Builds the one compiled piece: the runner's vCPU fast loop (agent/fastloop.c) through cffi."""
from setuptools import setup

setup(cffi_modules=["agent/cbuild.py:ffibuilder"])
