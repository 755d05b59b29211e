"""VmSpec files: the protobuf JSON of `kvmplat.v1.VmSpec`, written by hand.

Field names may be snake_case or camelCase (as json_format accepts). Enum values are friendlier than protobuf's
JSON: case-insensitive, with or without the enum's prefix (`BARE_METAL`, `abi_bare_metal`, `kvm`, `PV_KVM`,
`best_effort`), and a repeated enum field takes one value without brackets (`"pv": "kvm"`); `normalise` rewrites
them to their canonical names before json_format parses the result, and refuses an unknown field or value with a
message that names it and what is allowed; json_format's own errors are shown as `field.path: why`. No policy
here: whether the host can give the platform is the agent's call (CheckPlatform).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, cast

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from kvmplat.v1 import agent_pb2 as pb

__all__ = ["SpecError", "canonical_enum_name", "enum_prefix", "load_spec", "normalise", "parse_spec"]


# upb's descriptor classes stand in for the pure-Python ones at run time; the stubs know only the latter.
_VMSPEC = cast(Descriptor, pb.VmSpec.DESCRIPTOR)


class SpecError(ValueError):
    """A spec that is not a valid VmSpec; the message names the source and the field."""


def enum_prefix(enum: EnumDescriptor) -> str:
    """The UPPER_SNAKE prefix protobuf style gives values of `enum` (CompatPolicy -> COMPAT_POLICY_)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"


def canonical_enum_name(enum: EnumDescriptor, text: str) -> str | None:
    """The value name of `enum` that `text` means (any case, prefix optional), or None."""
    upper = text.strip().upper().replace("-", "_")
    prefix = enum_prefix(enum)
    bare = upper.removeprefix(prefix)
    for candidate in (upper, bare, prefix + bare):
        if candidate in enum.values_by_name:
            return candidate
    return None


def normalise(data: Any, descriptor: Descriptor = _VMSPEC, path: str = "") -> Any:
    """A copy of the JSON value `data` for a message of `descriptor`, with enum values canonical; SpecError names
    an unknown field or value by its path (e.g. `platform.abi`)."""
    if not isinstance(data, dict) or descriptor.full_name.startswith("google.protobuf."):
        return data  # not ours to rewrite: json_format reports the wrong shape with the field's name
    fields = {f.name: f for f in descriptor.fields} | {f.json_name: f for f in descriptor.fields}
    out: dict[str, Any] = {}
    for key, value in data.items():
        field = fields.get(key)
        if field is None:
            known = ", ".join(f.name for f in descriptor.fields)
            raise SpecError(f"unknown field {path + str(key)!r} (known here: {known})")
        out[key] = _normalise_field(value, field, f"{path}{field.name}")
    return out


def _normalise_field(value: Any, field: FieldDescriptor, path: str) -> Any:
    """`value` of `field` with enum values canonical (lists and maps element by element)."""
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        if not isinstance(value, dict):
            return value
        value_field = field.message_type.fields_by_name["value"]
        return {k: _normalise_single(v, value_field, f"{path}[{k!r}]") for k, v in value.items()}
    if field.is_repeated and isinstance(value, list):
        return [_normalise_single(v, field, f"{path}[{i}]") for i, v in enumerate(value)]
    if field.is_repeated and field.enum_type is not None and isinstance(value, str | int) and value is not True:
        return [_normalise_single(value, field, path)]  # "pv": "kvm" means the list of that one value
    return _normalise_single(value, field, path)


def _normalise_single(value: Any, field: FieldDescriptor, path: str) -> Any:
    """One (non-repeated) value of `field`, normalised."""
    if field.enum_type is not None and isinstance(value, str):
        name = canonical_enum_name(field.enum_type, value)
        if name is None:
            allowed = ", ".join(v.name for v in field.enum_type.values if v.number != 0)
            raise SpecError(f"{path}: unknown {field.enum_type.name} value {value!r} (one of: {allowed})")
        return name
    if field.message_type is not None:
        return normalise(value, field.message_type, path + ".")
    return value


def parse_spec(text: str, source: str = "spec") -> pb.VmSpec:
    """The VmSpec in the JSON `text`; SpecError names `source` and what is wrong."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise SpecError(f"{source}: not JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a VmSpec is a JSON object, not {type(data).__name__}")
    try:
        return json_format.ParseDict(normalise(data), pb.VmSpec())
    except SpecError as e:
        raise SpecError(f"{source}: {e}") from None
    except json_format.ParseError as e:
        raise SpecError(f"{source}: {_tidy(str(e))}") from None


def _tidy(message: str) -> str:
    """json_format's nested "Failed to parse a field: Failed to parse b field: why at VmSpec.a.." as `a.b: why`."""
    path = []
    while m := re.match(r"Failed to parse (\w+) field: ", message):
        path.append(m.group(1))
        message = message[m.end() :]
    message = re.sub(r" at VmSpec[\w.\[\]]*\.?$", "", message).rstrip(".")
    return f"{'.'.join(path)}: {message}" if path else message


def load_spec(path: str | Path) -> pb.VmSpec:
    """The VmSpec in the JSON file at `path`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise SpecError(f"cannot read spec file {path}: {reason}") from None
    return parse_spec(text, str(path))
