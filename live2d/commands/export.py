"""Write the particles of chosen classes as a RELION 3.1 particle star (for RELION, cryoSPARC's
Import Particle Stack or Scipion), pointing at the source's own stacks, with micrograph,
coordinates, CTF and the cycle's 2D alignment. DIR is the output folder or the Warp folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from live2d.commands.status import find_state


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, metavar="DIR",
                        help="the session's output folder, or the Warp folder it classifies")
    parser.add_argument("--to", type=Path, required=True, metavar="STAR",
                        help="the star file to write (an existing file is replaced atomically; "
                             "anything else there, a folder or a device, is refused)")
    parser.add_argument("--classes", default="auto",
                        help="auto (default: the proposed selection with the marks made in the "
                             "page over it) or class numbers, e.g. 1,4,7")
    parser.add_argument("--cycle", type=int,
                        help="the cycle whose classes and alignments are exported (default: "
                             "the latest classified one)")
    parser.add_argument("--whole-classes", action="store_true",
                        help="every particle of the chosen classes, without the curation that "
                             "leaves out those fitting their class far worse than its typical "
                             "member (the session's Curate particles setting; live2d status "
                             "shows how many each class keeps)")
    parser.add_argument("--relative-to", type=project_dir, metavar="PROJECT_DIR",
                        help="write image paths relative to this RELION project folder (RELION "
                             "resolves them from where it runs), instead of absolute paths")


def project_dir(text: str) -> Path:
    if not text.strip():  # Path("") is the current folder: say so rather than guess
        raise argparse.ArgumentTypeError("an empty folder name; give the RELION project "
                                         "folder (. for the current one)")
    return Path(text)


def parse_classes(text: str) -> str | list[int]:
    if text == "auto":
        return text
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--classes takes auto or numbers like 1,4,7, "
                                         f"not {text!r}") from None


def main(args: argparse.Namespace) -> int:
    from live2d.errors import SelectionError
    from live2d.export import export_particles

    state = find_state(args.dir, "export")
    if state is None:
        return 1
    try:
        exported = export_particles(state.parent, args.to, parse_classes(args.classes),
                                    args.cycle, args.relative_to,
                                    True if args.whole_classes else None)
    except (SelectionError, argparse.ArgumentTypeError, OSError) as exc:
        print(f"live2d export: {exc}", file=sys.stderr)
        return 1
    classes = ", ".join(str(k) for k in exported.classes)
    curated = (f"; {exported.curated} more left out as junk by the curation (--whole-classes "
               "keeps them)" if exported.curated else "")
    print(f"wrote {exported.particles} particles of classes {classes} (cycle "
          f"{exported.cycle}) to {exported.path}{curated}")
    return 0
