"""The ``live2d`` command line: every option says what it is, and the program says what it does."""

import argparse

import pytest

from live2d.cli import COMMANDS, build_parser


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_subcommand_is_built_with_a_summary():
    parser = build_parser()
    assert set(subcommands(parser)) == set(COMMANDS)
    listing = parser.format_help()
    for name, summary in COMMANDS.items():
        assert summary.strip() and summary in listing, name


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_of_every_subcommand_has_a_help(name):
    sub = subcommands(build_parser())[name]
    options = [a for a in sub._actions if not isinstance(a, argparse._HelpAction)]
    assert options, f"live2d {name} has no options at all?"
    missing = [a.option_strings[0] if a.option_strings else a.metavar or a.dest
               for a in options
               if not isinstance(a.help, str) or not a.help.strip() or a.help == argparse.SUPPRESS]
    assert not missing, f"live2d {name}: no help for {', '.join(missing)}"
    text = sub.format_help()  # help texts format (a stray % would raise here)
    for action in options:
        assert (action.option_strings[0] if action.option_strings else action.metavar
                or action.dest) in text


def test_the_programs_help_describes_it_to_a_user(capsys):
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert "live2d.commands" not in text and "module" not in text  # no developer's note
    for words in ("2D classification", "Warp", "live2d demo", "live2d serve", "live2d run",
                  "live2d COMMAND --help"):
        assert words in text, words
