"""cisTEM's UserInput in scripted mode (stdin not a TTY), as the stand-ins' question-and-answer.

Follows cisTEM's core/userinput.cpp: banner; each prompt printed padded to 50 characters and
`` : ``; one line read; a valid answer echoed on the same line; a blank answer or an invalid one
(wrong type by cisTEM's first-character rules, out of range, a must-exist file missing) ends the
program with status 255 (``exit(-1)``).
"""

from __future__ import annotations

import json
import math
import os
import re
import select
import sys
import time
from pathlib import Path

PROMPT_WIDTH = 50
INT_MAX = 2**31 - 1
DIGITS = "0123456789"
_ATOI = re.compile(r"[-+]?\d+")
_ATOF = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def crash(message: str, status: int = 1) -> None:
    """cisTEM's SendErrorAndCrash: an ``Error:`` message and a non-zero exit."""
    out(f"\n{message}\n\n")
    sys.exit(status)


class ScriptedInput:
    def __init__(self, program_name: str, version: str) -> None:
        self.program_name = program_name
        self.prompts: list[str] = []
        self.answers: list[str] = []
        self._stdin = b""  # read but not yet taken, like std::cin's buffer
        self._stdin_closed = False
        indent = " " * (len(program_name) // 2)
        out(f"\n\n        **   Welcome to {program_name}   **\n\n")
        out(f"{indent}         Version : {version}\n")
        out(f"{indent}        Compiled : Jan  1 2025\n")
        out(f"{indent} Library Version : 2.0.0-alpha-standin\n")
        out(f"{indent}     From Branch : standin\n")
        if sys.stdin.isatty():
            out(f"{indent}            Mode : Interactive\n\n")
            crash("Error: the stand-in runs in scripted mode only (stdin a pipe)")
        out(f"{indent}            Mode : Scripted\n\n")

    def filename(self, prompt: str, must_exist: bool = False) -> str:
        text = self._ask(prompt)
        if text.startswith("?"):
            self._invalid()
        if must_exist and not os.path.isfile(text):
            out("\nError: File does not exist, please provide an existing file!\n\n")
            self._invalid()
        return self._valid(prompt, text)

    def integer(self, prompt: str, low: int, high: int = INT_MAX) -> int:
        text = self._ask(prompt)
        if not (text[0] in DIGITS or (text[0] == "-" and text[1:2] and text[1] in DIGITS)):
            self._invalid()
        match = _ATOI.match(text)
        assert match is not None
        value = int(match.group(0))
        self._check_range(value, low, high)
        self._valid(prompt, text)
        return value

    def real(self, prompt: str, low: float, high: float = math.inf) -> float:
        text = self._ask(prompt)
        if not (text[0] in DIGITS or (text[0] in "-." and text[1:2] and text[1] in DIGITS)):
            self._invalid()
        match = _ATOF.match(text)
        assert match is not None
        value = float(match.group(0))
        self._check_range(value, low, high)
        self._valid(prompt, text)
        return value

    def yes_no(self, prompt: str) -> bool:
        text = self._ask(prompt)
        if text[0] not in "yYnN":
            self._invalid()
        self._valid(prompt, text)
        return text[0] in "yY"

    def record(self, **facts: object) -> None:
        """For tests: the answers and facts about this run, as JSON in $CISTEM_STANDIN_RECORD."""
        folder = os.environ.get("CISTEM_STANDIN_RECORD")
        if not folder:
            return
        facts.update(
            program=self.program_name,
            pid=os.getpid(),
            ppid=os.getppid(),
            prompts=self.prompts,
            answers=self.answers,
            unread_answers=self._unread_lines(),
            recorded=time.time(),
        )
        path = Path(folder) / f"{self.program_name}-{os.getpid()}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(facts))
        tmp.replace(path)  # whole or absent: tests poll for these files

    def _ask(self, prompt: str) -> str:
        out(prompt.ljust(PROMPT_WIDTH) + " : ")
        text = self._getline()
        text = text[:999]  # getline into char[1000]
        if text.startswith("*"):
            sys.exit(0)  # cisTEM: the user asked to quit
        if not text:
            out("\n Error: Blank answer in scripted mode, exiting...\n\n")
            sys.exit(255)
        return text

    def _getline(self) -> str:
        while b"\n" not in self._stdin and not self._stdin_closed:
            chunk = os.read(0, 4096)
            self._stdin += chunk
            self._stdin_closed = not chunk
        line, _, self._stdin = self._stdin.partition(b"\n")
        return line.decode(errors="replace")

    def _unread_lines(self) -> int:
        """Answer lines given but never asked for (cisTEM ignores them; tests count them)."""
        while not self._stdin_closed and select.select([0], [], [], 1.0)[0]:
            chunk = os.read(0, 4096)
            self._stdin += chunk
            self._stdin_closed = not chunk
        return len([line for line in self._stdin.split(b"\n") if line.strip()])

    def _valid(self, prompt: str, text: str) -> str:
        out(text + "\n")
        self.prompts.append(prompt)
        self.answers.append(text)
        return text

    def _check_range(self, value: float, low: float, high: float) -> None:
        if not low <= value <= high:
            out("\nError: Number outside of acceptable range!\n\n")
            self._invalid()

    def _invalid(self) -> None:
        out("\n Error: Running as script, and answer is not recognized...\n\n")
        sys.exit(255)
