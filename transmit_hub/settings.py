"""One declaration per setting: flags, environment and config file from a dataclass.

A program's settings are one frozen dataclass whose fields are declared with
:func:`setting` (its default, help text, metavar, validator, whether it is a secret).
:class:`Program` generates everything else from those fields, the same way for the hub
and the gateway:

- the argparse parser: ``--flag-name`` per field (``bool`` fields get ``--no-...`` too),
  with the default and the environment variable in each help line;
- the environment: ``PREFIX_FLAG_NAME`` per field (``TRANSMIT_HUB_AUTH_TOKEN``); an empty
  variable counts as unset;
- the config file (``--config FILE``, TOML): keys are the field names (``jwt_secret``),
  each checked against the field's type; an unknown key is an error naming it; the file
  must be a regular file in UTF-8 of at most
  :data:`~transmit_hub.files.CONFIG_FILE_MAX_BYTES` (a FIFO, a device or a huge file is
  refused at once, never read until it ends);
- ``--print-config``: the effective settings as TOML, secrets masked.

Precedence: flags > environment > file > defaults. Adding a setting is one edit: a field
with :func:`setting` in the config dataclass (and its row in the README's flag table).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import tomllib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, NoReturn, TypeVar

from .errors import ConfigError
from .files import CONFIG_FILE_MAX_BYTES, read_small_file

__all__ = [
    "ENV_RULE",
    "Loaded",
    "Option",
    "Program",
    "Setting",
    "at_least",
    "between",
    "check_fields",
    "non_negative",
    "one_of",
    "positive",
    "setting",
    "url_without_password",
]

_KEY = "transmit_hub.setting"

ENV_RULE = "an empty variable counts as unset"

Check = Callable[[Any], str | None]
"""A validator: the value -> ``None`` when fine, else what is wrong ("must be positive")."""

C = TypeVar("C")


@dataclass(frozen=True, slots=True)
class Setting:
    """What a field says about itself besides its name, type and default."""

    help: str
    metavar: str | None = None
    check: Check | None = None
    choices: tuple[str, ...] | None = None
    secret: bool = False
    """Never shown: ``--print-config`` prints ``***``, errors leave the value out."""
    redact: Callable[[str], str] | None = None
    """What ``--print-config`` shows of the value (a URL without its password, say)."""
    group: str | None = None
    """Starts a ``--help`` section (a key of :attr:`Program.groups`) at this field: it and
    the fields after it, up to the next ``group``, are listed under its title."""


def setting(
    default: Any,
    help: str,
    *,
    metavar: str | None = None,
    check: Check | None = None,
    choices: Sequence[str] | None = None,
    secret: bool = False,
    redact: Callable[[str], str] | None = None,
    group: str | None = None,
) -> Any:
    """A config field: its default, help line, metavar, validator, secrecy and help group."""
    spec = Setting(
        help=help,
        metavar=metavar,
        check=check,
        choices=tuple(choices) if choices is not None else None,
        secret=secret,
        redact=redact,
        group=group,
    )
    return dataclasses.field(default=default, metadata={_KEY: spec})


# --- validators ---------------------------------------------------------------------------


def at_least(low: float) -> Check:
    return lambda value: None if value >= low else f"must be at least {low:g}"


def between(low: float, high: float) -> Check:
    return lambda value: None if low <= value <= high else f"must be {low:g} to {high:g}"


def positive(value: float) -> str | None:
    return None if value > 0 else "must be positive"


def non_negative(value: float) -> str | None:
    return None if value >= 0 else "must not be negative"


def url_without_password(url: str) -> str:
    """``redis://user:pass@host`` -> ``redis://user:***@host`` (for ``redact=``)."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, hosts = rest.rpartition("@")
    if not sep or not at:
        return url
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}://{user + ':***' if colon else '***'}@{hosts}"


def one_of(*choices: str, fold: Callable[[str], str] = str) -> Check:
    """The value (``fold``-ed, e.g. ``str.upper``) must be one of ``choices``."""
    return lambda value: None if fold(value) in choices else f"must be one of {', '.join(choices)}"


# --- the fields ---------------------------------------------------------------------------

_KINDS: dict[type, str] = {
    bool: "a boolean (true or false)",
    int: "an integer",
    float: "a number",
    str: "a string",
}


@dataclass(frozen=True, slots=True)
class Option:
    """One field of a config dataclass, as the parser, environment and file see it."""

    name: str
    kind: type
    """``str``, ``int``, ``float`` or ``bool``."""
    optional: bool
    """``None`` is a value (the field's type is ``X | None``)."""
    default: Any
    spec: Setting

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def env(self, prefix: str) -> str:
        return prefix + self.name.upper()

    def from_text(self, text: str) -> Any:
        """A flag's or a variable's text -> the value; ValueError when it does not parse."""
        if self.kind is bool:
            folded = text.strip().lower()
            if folded in ("1", "true", "yes", "on"):
                return True
            if folded in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        return self.kind(text)

    def from_toml(self, value: object) -> Any:
        """A config file's value -> the field's value; TypeError when its type is wrong."""
        if self.kind is bool:
            ok = isinstance(value, bool)
        elif self.kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif self.kind is float:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            value = float(value) if ok else value  # type: ignore[arg-type]
        else:
            ok = isinstance(value, str)
        if not ok:
            raise TypeError(_KINDS[self.kind])
        return value


_OPTIONS: dict[type, tuple[Option, ...]] = {}


def options(config: type) -> tuple[Option, ...]:
    """The settings of a config dataclass, in declaration order."""
    if (known := _OPTIONS.get(config)) is not None:
        return known
    hints = typing.get_type_hints(config)
    found = []
    for field in dataclasses.fields(config):
        spec = field.metadata.get(_KEY)
        if spec is None:
            raise TypeError(f"{config.__name__}.{field.name} is not declared with setting()")
        kind = hints[field.name]
        args = typing.get_args(kind)
        optional = isinstance(kind, types.UnionType) and type(None) in args
        if optional:
            kind = next(a for a in args if a is not type(None))
        if kind not in _KINDS:
            raise TypeError(f"{config.__name__}.{field.name}: unsupported type {kind!r}")
        found.append(Option(field.name, kind, optional, field.default, spec))
    _OPTIONS[config] = tuple(found)
    return _OPTIONS[config]


def check_fields(config: object, error: type[Exception]) -> None:
    """Run each field's own validator; raise ``error`` naming the flag of the first failure.

    Called first thing in the dataclass's ``__post_init__``; checks that tie several
    fields together follow it there.
    """
    for option in options(type(config)):
        value = getattr(config, option.name)
        if value is None and option.optional:
            continue
        spec = option.spec
        problem = None
        if spec.choices is not None and value not in spec.choices:
            problem = f"must be one of {', '.join(spec.choices)}"
        elif spec.check is not None:
            problem = spec.check(value)
        if problem is not None:
            shown = "" if spec.secret else f", got {value!r}"
            raise error(f"{option.flag} {problem}{shown}")


# --- the program --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Loaded(Generic[C]):
    """The outcome of parsing a command line."""

    config: C
    print_config: bool = False


class _Parser(argparse.ArgumentParser):
    """An argument parser that raises the program's config error instead of exiting."""

    raises: type[Exception] = ValueError

    def error(self, message: str) -> NoReturn:
        raise self.raises(message)


@dataclass(frozen=True, slots=True)
class Program(Generic[C]):
    """A program's command line, environment and config file, all from ``config``'s fields."""

    config: type[C]
    prog: str
    env_prefix: str
    description: str
    error: type[Exception]
    """Raised with one line on any bad flag, variable, file or value."""
    epilog: str = ""
    groups: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Help sections: ``setting(group=KEY)`` -> title, in this order."""
    name: str = ""
    """The name on its one-line errors (:mod:`transmit_hub.cli`; empty: ``prog``)."""
    logger: str = ""
    """The logger that reports uncaught errors in JSON logs (empty: ``name``)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", self.name or self.prog)
        object.__setattr__(self, "logger", self.logger or self.name)

    def options(self) -> tuple[Option, ...]:
        return options(self.config)

    def build_parser(self) -> argparse.ArgumentParser:
        """The parser: one flag per field; every default is ``None`` (= not given)."""
        parser = _Parser(
            prog=self.prog,
            description=self.description,
            epilog=(
                f"{self.epilog} Every flag can also be set in the environment as "
                f"{self.env_prefix}<FLAG> in upper snake case (e.g. "
                f"{self.options()[0].env(self.env_prefix)}), or in the --config file; "
                f"flags win over the environment, which wins over the file; {ENV_RULE}."
            ).strip(),
        )
        parser.raises = self.error
        sections = {key: parser.add_argument_group(title) for key, title in self.groups.items()}
        section: argparse._ActionsContainer = parser
        for option in self.options():
            spec = option.spec
            shown = "" if option.default in (None, "") else f" (default: {_show(option.default)})"
            text = f"{spec.help}{shown} [env {option.env(self.env_prefix)}]"
            if spec.group is not None:
                section = sections[spec.group]
            if option.kind is bool:
                section.add_argument(
                    option.flag,
                    dest=option.name,
                    action=argparse.BooleanOptionalAction,
                    default=None,
                    help=text.replace("%", "%%"),
                )
                continue
            section.add_argument(
                option.flag,
                dest=option.name,
                type=option.kind,
                default=None,
                choices=spec.choices,
                metavar=spec.metavar or (None if spec.choices else option.name.upper()),
                help=text.replace("%", "%%"),
            )
        meta = parser.add_argument_group("configuration file")
        meta.add_argument(
            "--config",
            dest="_config",
            metavar="FILE",
            help="read settings from this TOML file: keys are the flag names without the "
            "leading dashes, inner dashes as underscores (--log-level DEBUG is "
            'log_level = "DEBUG"); an unknown key or a value of the wrong type is an error '
            f"[env {self.env_prefix}CONFIG]",
        )
        meta.add_argument(
            "--print-config",
            dest="_print_config",
            action="store_true",
            help="print the effective settings (flags, environment, file, defaults) as TOML "
            "with secrets masked, and exit",
        )
        return parser

    def load(self, argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Loaded[C]:
        """Flags, environment and file -> a validated config; ``self.error`` on any problem."""
        environ = os.environ if environ is None else environ
        given = vars(self.build_parser().parse_args(list(argv)))
        path = given.pop("_config") or environ.get(self.env_prefix + "CONFIG") or None
        print_config = bool(given.pop("_print_config"))
        values: dict[str, Any] = self.read_file(path) if path else {}
        values.update(self.read_environment(environ))
        values.update({name: value for name, value in given.items() if value is not None})
        return Loaded(self.config(**values), print_config)

    def read_environment(self, environ: Mapping[str, str]) -> dict[str, Any]:
        values = {}
        for option in self.options():
            name = option.env(self.env_prefix)
            text = environ.get(name)
            if not text:  # unset or empty: the rule of both programs
                continue
            try:
                values[option.name] = option.from_text(text)
            except ValueError:
                shown = "" if option.spec.secret else f" {text!r}"
                raise self.error(
                    f"environment variable {name}:{shown} is not {_KINDS[option.kind]}"
                ) from None
        return values

    def read_file(self, path: str) -> dict[str, Any]:
        """The TOML file's settings, each checked against its field's type."""
        try:
            data = read_small_file(path, CONFIG_FILE_MAX_BYTES)
        except OSError as exc:
            raise self.error(f"--config {path}: cannot read it ({exc.strerror})") from None
        except ConfigError as exc:
            raise self.error(f"--config {path}: {exc}") from None
        try:
            table = tomllib.loads(data.decode())
        except UnicodeDecodeError as exc:
            raise self.error(f"--config {path}: not UTF-8 (byte {exc.start})") from None
        except tomllib.TOMLDecodeError as exc:
            raise self.error(f"--config {path}: not valid TOML ({exc})") from None
        except RecursionError:
            raise self.error(f"--config {path}: not valid TOML (nested too deeply)") from None
        known = {option.name: option for option in self.options()}
        values = {}
        for key, value in table.items():
            option = known.get(key)
            if option is None:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise self.error(f"--config {path}: unknown key {key!r}{hint}")
            try:
                values[key] = option.from_toml(value)
            except TypeError as exc:
                raise self.error(
                    f"--config {path}: {key} must be {exc}, got {_toml_kind(value)}"
                ) from None
        return values

    def render(self, config: C) -> str:
        """The settings as TOML (what ``--print-config`` prints): secrets masked, ``None`` as
        a comment (TOML has no null)."""
        lines = []
        for option in self.options():
            value = getattr(config, option.name)
            if value is None:
                lines.append(f"# {option.name} = (unset)")
            elif option.spec.secret and value:
                lines.append(f'{option.name} = "***"')
            elif option.spec.redact is not None:
                lines.append(f"{option.name} = {_toml(option.spec.redact(value))}")
            else:
                lines.append(f"{option.name} = {_toml(value)}")
        return "\n".join(lines) + "\n"


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a TOML basic string


def _toml_kind(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    return names.get(type(value), f"a {type(value).__name__}")
