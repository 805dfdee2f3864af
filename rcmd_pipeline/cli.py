"""``rcmd``: recommendations from a materialized pipeline, on the command line.

::

    rcmd similar 1                       # movies like Toy Story (nearest overview embeddings)
    rcmd similar 1 --strategy series     # its series first, newest first
    rcmd search "장난감들이 살아 움직이는 이야기"
    rcmd user 42 --recent 5 --json
    rcmd user 42 --strategy seq_hybrid   # from the user's whole history, a learned strategy

Reads the state of ``RCMD_DATA_DIR`` (see README: configuration by environment variable) through
:class:`rcmd_pipeline.serving.Recommendations`. ``--json`` prints a JSON list of
``{"movie_id", "title", "year", "score"}`` objects; otherwise a table. Any error is one line on
stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import unicodedata
from collections.abc import Sequence
from typing import Any

from rcmd_pipeline.recommenders.registry import REGISTRY, Strategy

EXIT_ERROR = 2
TITLE_WIDTH = 40
"""Longest title shown in the table, in terminal columns (a Hangul syllable takes two)."""


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump (main prints it)
        raise _UsageError(f"{message} (see `{self.prog} --help`)")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def build_parser(registry: Sequence[Strategy] = REGISTRY) -> argparse.ArgumentParser:
    """The ``rcmd`` parser; ``--strategy`` offers the study's four and every other strategy of ``registry``."""
    from rcmd_pipeline.serving import STUDY_STRATEGIES

    strategies = (*STUDY_STRATEGIES, *(s.name for s in registry if s.name not in STUDY_STRATEGIES))

    parser = _Parser(
        prog="rcmd",
        description="Movie recommendations from the materialized rcmd_pipeline state (RCMD_DATA_DIR).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{similar,search,user}",
                                parser_class=_Parser)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("-k", type=_positive, default=10, help="how many movies (default 10)")
        p.add_argument("--json", action="store_true", help="print a JSON list of objects instead of a table")

    similar = sub.add_parser("similar", help="movies like one movie")
    similar.add_argument("movie_id", type=_whole, metavar="MOVIE_ID", help="MovieLens movie id (1 = Toy Story)")
    similar.add_argument("--strategy", choices=strategies, default="vector",
                         help="vector (nearest overviews, default), series, series_vector, random (the study's), "
                              "or a registered strategy learned from ratings: " + ", ".join(strategies[4:]))
    common(similar)

    search = sub.add_parser("search", help="movies whose overview is nearest to a text")
    search.add_argument("text", metavar="TEXT", help="free text, e.g. \"장난감들이 살아 움직이는 이야기\"")
    common(search)

    user = sub.add_parser("user", help="movies for a user, from their most recently rated movies")
    user.add_argument("user_id", type=_whole, metavar="USER_ID", help="MovieLens user id")
    user.add_argument("--recent", type=_positive, default=10,
                      help="how many of the user's most recent movies (with a vector) to average (default 10)")
    user.add_argument("--strategy", choices=strategies, default="vector",
                      help="vector (the mean of the recent movies' vectors, default) or any registered strategy, "
                           "asked with the user's whole history: " + ", ".join(s for s in strategies if s != "vector"))
    common(user)
    return parser


# ------------------------------------------------------------------------ table output


def _char_width(ch: str) -> int:
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def display_width(text: str) -> int:
    """Terminal columns of ``text`` (wide East Asian characters count two)."""
    return sum(_char_width(ch) for ch in text)


def fit(text: str, width: int, align: str = "left") -> str:
    """``text`` padded (or cut, with an ellipsis) to exactly ``width`` terminal columns."""
    if display_width(text) > width:
        out, used = [], 0
        for ch in text:
            w = _char_width(ch)
            if used + w > width - 1:
                break
            out.append(ch)
            used += w
        text = "".join(out) + "…"
    pad = " " * (width - display_width(text))
    return pad + text if align == "right" else text + pad


def format_table(rows: list[dict[str, Any]]) -> str:
    """Rank, movie id, Korean title, year and score, aligned for wide characters."""
    cells = [(str(i), str(r["movie_id"]), r["title"] or "-", "" if r["year"] is None else str(r["year"]),
              "-" if r["score"] is None else f"{r['score']:.4f}") for i, r in enumerate(rows, 1)]
    header = ("#", "movie_id", "title", "year", "score")
    widths = [max([display_width(c[j]) for c in cells] + [display_width(header[j])]) for j in range(5)]
    widths[2] = min(widths[2], TITLE_WIDTH)
    aligns = ("right", "right", "left", "right", "right")

    def line(values: Sequence[str]) -> str:
        return "  ".join(fit(v, w, a) for v, w, a in zip(values, widths, aligns, strict=True)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(c) for c in cells)])


def _label(movie: dict[str, Any]) -> str:
    title = movie.get("title") or f"movie {movie['movie_id']}"
    return f"{title} ({movie['year']})" if movie.get("year") else title


# ------------------------------------------------------------------------ main


def _run(args: argparse.Namespace, registry: Sequence[Strategy]) -> tuple[list[dict[str, Any]], str]:
    from rcmd_pipeline.serving import Recommendations

    with Recommendations.from_environment(registry=registry) as rec:
        if args.command == "similar":
            rows = rec.similar(args.movie_id, k=args.k, strategy=args.strategy)
            heading = f"Movies like {_label(rec.movie(args.movie_id))} [{args.movie_id}], strategy {args.strategy}:"
        elif args.command == "search":
            rows = rec.search(args.text, k=args.k)
            heading = f"Movies nearest to \"{args.text.strip()}\":"
        else:
            rows = rec.user(args.user_id, k=args.k, recent=args.recent, strategy=args.strategy)
            heading = (f"For user {args.user_id} (from up to {args.recent} of their most recent movies with a vector, "
                       "their own movies excluded):" if args.strategy == "vector" else
                       f"For user {args.user_id}, strategy {args.strategy} (from their ratings, their own movies "
                       "excluded):")
    return rows, heading


def main(argv: Sequence[str] | None = None, registry: Sequence[Strategy] = REGISTRY) -> int:
    """Run ``rcmd``; returns the exit status (0, or 2 after a one-line error on stderr)."""
    logging.basicConfig(level=logging.WARNING, format="rcmd: %(message)s")
    try:
        args = build_parser(registry).parse_args(argv)
        rows, heading = _run(args, registry)
    except _UsageError as exc:
        print(f"rcmd: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("rcmd: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a command-line tool: one line, never a traceback
        message = " ".join(str(exc).split()) or type(exc).__name__
        if type(exc).__module__ != "rcmd_pipeline.serving" and not isinstance(exc, (LookupError, ValueError)):
            message = f"{type(exc).__name__}: {message}"
        print(f"rcmd: error: {message}", file=sys.stderr)
        return EXIT_ERROR
    try:
        if args.json:
            print(json.dumps(rows, ensure_ascii=False, indent=2))
        else:
            print(heading)
            print(format_table(rows) if rows else "(nothing to recommend)")
        sys.stdout.flush()
    except BrokenPipeError:  # `rcmd ... | head`: the reader left; quiet exit (Python docs' recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
