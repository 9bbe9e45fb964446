"""Write a simulated Warp session: UTF-16 settings, per-micrograph stacks, star files rewritten
whole after each micrograph, as Warp does; the true view, angle and shift of every particle go to
a folder beside it (WARP_DIR_truth) so results can be scored."""

from __future__ import annotations

import argparse
from pathlib import Path

from live2d.simulate import (
    BAD_SQUARE_JUNK,
    HOLES_PER_SQUARE,
    MICROGRAPHS_PER_HOLE,
    simulate,
)


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("warp_dir", type=Path, metavar="WARP_DIR",
                        help="folder to write the simulated Warp session into (created if "
                             "needed); run again with more --particles and the same other "
                             "options to extend it")
    parser.add_argument("--particles", type=int, default=2000,
                        help="particles the session holds in all (default 2000)")
    parser.add_argument("--per-micrograph", type=int, default=200,
                        help="particles per micrograph, one stack each (default 200)")
    parser.add_argument("--interval", type=float, default=0.0,
                        help="seconds between micrographs, to mimic a live session")
    parser.add_argument("--box", type=int, default=128, help="box size, pixels")
    parser.add_argument("--pixel-size", type=float, default=1.5, help="Å per pixel")
    parser.add_argument("--snr", type=float, default=0.1, help="signal-to-noise ratio")
    parser.add_argument("--views", type=int, default=12, help="distinct views of the particle")
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed: the same seed writes the same session (default 0)")
    parser.add_argument("--junk", type=float, default=0.0,
                        help="fraction of picks that are junk: empty ice, contamination, carbon "
                             "edges, aggregates (default 0)")
    parser.add_argument("--off-centre", type=float, default=0.0,
                        help="picks up to this many pixels off the particle's centre (default 0:"
                             " up to 8%% of its diameter)")
    parser.add_argument("--model", type=Path, metavar="PDB",
                        help="project this atomic model (PDB, .pdb.bz2/.gz, or mmCIF) at "
                             "uniformly random orientations, a continuum of views, instead of "
                             "the phantom's --views; the truth records each orientation")
    parser.add_argument("--truth", type=Path, help="truth folder (WARP_DIR_truth)")
    parser.add_argument("--epu", type=Path, metavar="EPU_DIR",
                        help="also write an EPU session folder here (Images-Disc1/GridSquare_*/"
                             "Data/FoilHole_*.xml), for live2d run --epu")
    parser.add_argument("--holes-per-square", type=int, default=HOLES_PER_SQUARE,
                        help="foil holes collected on a grid square before the next, "
                             f"{MICROGRAPHS_PER_HOLE} micrographs to a hole (default "
                             f"{HOLES_PER_SQUARE})")
    parser.add_argument("--bad-square", type=int, default=0, metavar="N",
                        help="make the Nth grid square collected (from 1) a bad one: "
                             f"{BAD_SQUARE_JUNK * 100:.0f}%% of its picks empty ice, for the "
                             "bad-square alert (default 0: none; live2d demo uses 2)")


def main(args: argparse.Namespace) -> int:
    simulate(args.warp_dir, particles=args.particles, per_micrograph=args.per_micrograph,
             interval=args.interval, box=args.box, pixel_size=args.pixel_size, snr=args.snr,
             views=args.views, seed=args.seed, junk=args.junk, off_centre=args.off_centre,
             truth_dir=args.truth, epu_dir=args.epu, holes_per_square=args.holes_per_square,
             bad_square=args.bad_square, model=args.model)
    print(f"wrote {args.particles} particles to {args.warp_dir}")
    return 0
