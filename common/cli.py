"""The command-line layer every ``python -m`` entry point of the project shares (stdlib only).

- :class:`UserError`: the base of every error that is the user's to fix (a wrong path, value or file);
  the error classes of the packages derive from it.
- :func:`setup_logging`: one format, ``-v`` for debug.
- :func:`run_main`: calls an entry point; a user error is printed as one line (exit code 2), a file that
  cannot be read or written as one line naming it (exit code 1), never a traceback; Ctrl-C exits 130,
  SIGTERM 143 (:func:`sigterm_raises` turns the signal into :class:`Terminated`, so ``finally``
  blocks and the caller's handlers run and what was finished is written).
- :func:`add_dataclass_options`: command-line options generated from a config dataclass, so a knob that
  exists once in the config has the same name (the field with ``-``) everywhere it is exposed; a field's
  ``check`` (``common.validate``) is applied where the option is parsed, and by :func:`check_fields` to
  values from a config file.

Exit codes of every command: 0 success, 1 a run that failed (a fault, not the user's input: a disk that is
full or read-only), 2 the user's input was refused (the message says which value and the fix), 130
interrupted (Ctrl-C), 143 stopped by SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import sys
import types
import typing

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143


class UserError(Exception):
    """A mistake the user can fix; the message names the value and the fix."""


# What a command reports as one line with exit code 2: the project's own UserError, and the errors the
# standard library raises for a bad path or value before our code can wrap them.
USER_ERRORS = (UserError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, ImportError)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


class Terminated(BaseException):
    """SIGTERM arrived (raised in the main thread by :func:`terminate_on_sigterm`): stop, keep what is done."""


_held = 0  # > 0 while results are written whole (see :func:`whole_writes`)
_pending = False  # a SIGTERM arrived meanwhile


def _raise_terminated(signum, frame):
    global _pending
    if _held:
        _pending = True  # raised when the write in progress is done
        return
    raise Terminated("stopped by SIGTERM")


@contextlib.contextmanager
def sigterm_raises():
    """Inside this block SIGTERM raises :class:`Terminated` in the main thread (as Ctrl-C raises
    KeyboardInterrupt), so a command unwinds, writes what it finished and exits 143 through
    :func:`run_main`; the previous handler is restored after it (outside the main thread: nothing changes)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def whole_writes():
    """A set of result files written together: a SIGTERM that arrives meanwhile stops the command only once
    they are all written (never a JSON of this flight beside a CSV of the last)."""
    global _held, _pending
    _held += 1
    try:
        yield
    except BaseException:
        _held -= 1
        raise
    _held -= 1
    if not _held and _pending:
        _pending = False
        raise Terminated("stopped by SIGTERM")


def one_line(e: BaseException) -> str:
    """The first line of an error's message (its class name when it has none)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def os_error_line(e: OSError) -> str:
    """An OSError as one line naming the file and the fix: "cannot write /x/y: Permission denied (...)"."""
    if e.filename is None:
        return one_line(e)
    name = f"{e.filename}" + (f" -> {e.filename2}" if e.filename2 else "")
    return (f"{name}: {e.strerror or one_line(e)}; check the path, its permissions and the free space "
            "(or choose another folder)")


_interrupted = False  # a SIGINT arrived (run_main's handler): an error after it is the interrupt's


def _on_sigint(signum, frame):
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


def interrupted() -> bool:
    """Whether Ctrl-C arrived during :func:`run_main`: a library that turns the KeyboardInterrupt raised inside
    its own code into an error of its own (ONNX Runtime: "initialization failed") is still an interrupt."""
    return _interrupted


def run_main(fn, *args, logger_name: str = "geoloc") -> int:
    """``fn(*args)`` as a command: its int result, or one line and the exit code of the failure: 2 for a
    user error, 1 for a file that cannot be read or written (named), 130 on Ctrl-C, 143 on SIGTERM."""
    import signal
    import threading

    log = logging.getLogger(logger_name)
    main = threading.current_thread() is threading.main_thread()
    if main and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)
    try:
        return int(fn(*args) or 0)
    except KeyboardInterrupt:
        log.error("interrupted")
        return EXIT_INTERRUPTED
    except Terminated:
        log.error("stopped by SIGTERM")
        return EXIT_TERMINATED
    except (*USER_ERRORS, OSError) as e:
        if _interrupted:  # the Ctrl-C, turned into its own error by a library it interrupted
            log.error("interrupted")
            return EXIT_INTERRUPTED
        if isinstance(e, USER_ERRORS):
            log.error("%s", one_line(e))
            return EXIT_USAGE
        log.error("%s", os_error_line(e))  # a disk that is full or read-only, a folder that may not be created
        return EXIT_FAILED


def _base_type(tp):
    """(type, is_list) of an annotation like ``float | None`` or ``list[str] | None``."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = args[0]
    if typing.get_origin(tp) is list:
        return typing.get_args(tp)[0], True
    return tp, False


def _option_type(tp, check, name: str):
    """An argparse ``type=``: the text as ``tp``, then the field's ``check(value, name)`` (common.validate);
    a bad value ends in argparse's one-line "argument --x: ..." with exit status 2."""
    def parse(text: str):
        try:
            value = tp(text)
        except ValueError:
            kind = "an integer" if tp is int else "a number" if tp is float else f"a {tp.__name__}"
            raise argparse.ArgumentTypeError(f"{name} must be {kind}, got {text!r}") from None
        if check is None:
            return value
        try:
            return check(value, name)
        except ValueError as e:
            raise argparse.ArgumentTypeError(one_line(e)) from None

    parse.__name__ = tp.__name__  # argparse names the type in some messages
    return parse


def option_names(f: dataclasses.Field) -> list[str]:
    """A field's option strings: ``--field-name`` and its ``aliases`` (``-v`` is an alias, so it follows)."""
    return [f"--{f.name.replace('_', '-')}", *f.metadata.get("aliases", ())]


def add_dataclass_options(parser: argparse.ArgumentParser, cls, *, skip=(), group: str | None = None) -> None:
    """One ``--field-name`` option per field of dataclass ``cls`` (``metadata``: ``help``, ``aliases``,
    ``choices``, ``metavar``, ``check``, ``required``, ``hidden`` (not in --help), ``append`` for a repeatable
    option of a ``list[str]``;
    ``positional`` with its ``nargs`` for an argument). Every default is None, so an option that is not given
    overrides nothing (the dataclass default, or a config file's value, stays; :func:`with_defaults` fills
    them in); booleans get ``--x/--no-x``."""
    target = parser.add_argument_group(group) if group else parser
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or f.metadata.get("cli") is False:
            continue
        tp, is_list = _base_type(hints[f.name])
        if f.metadata.get("positional"):  # an argument, not an option: FILE, or FILE... (nargs)
            target.add_argument(f.name, type=_option_type(tp, f.metadata.get("check"), f.name), default=None,
                                nargs=f.metadata.get("nargs", "+" if is_list else None), help=option_help(f),
                                **({"metavar": f.metadata["metavar"]} if "metavar" in f.metadata else {}))
            continue
        names = option_names(f)
        kw = {"dest": f.name, "default": None,
              "help": argparse.SUPPRESS if f.metadata.get("hidden") else option_help(f)}
        if f.metadata.get("required"):
            kw["required"] = True
        if tp is bool:
            target.add_argument(*names, action=argparse.BooleanOptionalAction, **kw)
            continue
        for key in ("choices", "metavar"):
            if key in f.metadata:
                kw[key] = f.metadata[key]
        if f.metadata.get("append"):  # repeatable: --set a=1 --set b=2
            target.add_argument(*names, action="append", type=_option_type(tp, f.metadata.get("check"), f.name),
                                **kw)
            continue
        target.add_argument(*names, type=_option_type(tp, f.metadata.get("check"), f.name),
                            nargs="+" if is_list else None, **kw)


def options_parser(cls, doc: str | None, prog: str | None = None) -> argparse.ArgumentParser:
    """A command's parser: its module docstring as the description (kept as written) and the options of the
    dataclass ``cls``."""
    ap = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_options(ap, cls)
    return ap


def option_help(f: dataclasses.Field) -> str:
    """A field's help text with its default, as every command shows it."""
    helptext = f.metadata.get("help", "")
    default = f.default if f.default is not dataclasses.MISSING else None
    if f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    if default not in (None, "", [], ()) and not isinstance(default, bool):
        shown = " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default) \
            if isinstance(default, (list, tuple)) else default
        helptext += f" (default: {shown})"
    return helptext


def check_fields(obj) -> None:
    """Run each field's ``check`` on a dataclass instance's values (from a config file or a caller: the
    same rule as on the command line); lists are checked item by item, None is left alone."""
    for f in dataclasses.fields(obj):
        check = f.metadata.get("check")
        value = getattr(obj, f.name)
        if check is None or value is None:
            continue
        if isinstance(value, (list, tuple)):
            setattr(obj, f.name, type(value)(check(v, f"--{f.name.replace('_', '-')}") for v in value))
        else:
            setattr(obj, f.name, check(value, f"--{f.name.replace('_', '-')}"))


def parse_options(parser: argparse.ArgumentParser, argv, *classes, **own_defaults) -> argparse.Namespace:
    """Parse ``argv``: an option not given takes its dataclass default, then, for a shared option whose
    default is None (the size of an experiment: ``--frames``, ``--runs``...), the command's own default
    from ``own_defaults`` (stated in the command's description)."""
    args = with_defaults(parser.parse_args(argv), *classes)
    for name, value in own_defaults.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    return args


def with_defaults(namespace: argparse.Namespace, *classes) -> argparse.Namespace:
    """Fill the options of ``classes``' fields that were not given with the dataclass defaults (for commands
    without a config file, which read ``args.x`` directly)."""
    for cls in classes:
        for f in dataclasses.fields(cls):
            if getattr(namespace, f.name, None) is not None:
                continue
            if f.default is not dataclasses.MISSING:
                setattr(namespace, f.name, f.default)
            elif f.default_factory is not dataclasses.MISSING:
                setattr(namespace, f.name, f.default_factory())
    return namespace


def dataclass_values(cls, namespace: argparse.Namespace) -> dict:
    """The options of ``cls``'s fields that were given (not None) in a parsed namespace."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(namespace).items() if k in names and v is not None}


class _RemovedOption(argparse.Action):
    """An option that no longer exists: refused by name with the reason (never silently accepted)."""

    def __init__(self, option_strings, dest, why: str = "", **kw):
        kw.update(nargs="?", help=argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kw)
        self.why = why

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} was removed: {self.why}")


def add_removed_options(parser: argparse.ArgumentParser, removed: dict[str, str]) -> None:
    """Options ``--name`` (from ``removed``: field name -> why) that exit 2 with the reason when given."""
    for name, why in removed.items():
        parser.add_argument(f"--{name.replace('_', '-')}", action=_RemovedOption, why=why,
                            dest=f"removed_{name}", default=None)
