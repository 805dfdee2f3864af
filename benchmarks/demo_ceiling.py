"""The Bayes ceiling of HitRatio@10 on the demo's evaluation pairs: the most any strategy can expect.

    python benchmarks/demo_ceiling.py [--json PATH]

``data/demo`` is drawn from a known model (``rcmd_pipeline/demo/generate.py``), so the best top-10
list of a pair can be computed. This replays the generator through its ``observe`` hook (and stops
unless the replay rebuilds ``data/demo/ratings.csv`` byte for byte and row for row), computes at
every rating the generator's next-movie distribution from its state (taste, seen movies, time,
previous movie; the series / similar / appeal mixture and the picker's 64 tries, exactly; checked
against the generator's own branch at every step and, for the picker, by calibration), and
averages the top-10 mass over the evaluation pairs (``build_eval_transitions``, 1000 / 3000).

Both oracles condition on the pair's existence: its next movie passes the ``min_movie_ratings``
filter (counting its own rating; the other ratings are taken as given).

- **state oracle**: the generator's state before the step that generated the pair's next movie.
  Not a strict bound: the evaluation orders a second's ratings by movie id, so a history can hold a
  rating generated *after* the next movie in the same second (a sequel or similar story of it),
  which the state does not know.
- **strict oracle**, the ceiling: that state, the query's history, and the pair's second (its size,
  the pair's place, its other ratings), except the rating just before the next movie when it sorts
  after it (the generator's previous movie, which no history shows), or else the one just after it
  when it sorts after it: a hidden rating is summed over. Everything a strategy sees (the history,
  the time, other users' ratings, independent draws under the model) is a function of what it
  knows, so no strategy expects more hits. Exact for seconds of one or two ratings; in longer ones
  it sees more of the second than a history does, so there it is a looser bound.

It is a ceiling against the model, not the seed (a strategy that knows ``SEED`` could replay the
generator and hit every pair), and it takes the filter's counts and the window's other pairs as
independent of the pair's choice (exact for other users, nearly so for the user's later ratings).
Printed: each oracle's expected HR@10 (mean of per-pair probabilities, normal 95% interval over
pairs) by generating branch and by what the pair's second holds, on the evaluation window, the
validation window before it and (state oracle only) every filtered pair, against ``next_movie``
(the pipeline's recommender, fitted as ``eval_real_small.py`` fits it). See docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import print_machine  # noqa: E402

from rcmd_pipeline.demo import generate as gen  # noqa: E402
from rcmd_pipeline.evaluation import TransitionSettings, build_eval_transitions, hits_at_k  # noqa: E402
from rcmd_pipeline.evaluation.report import hit_ratio_interval  # noqa: E402
from rcmd_pipeline.evaluation.tuning import validation_split  # noqa: E402
from rcmd_pipeline.recommenders.history import build_queries  # noqa: E402
from rcmd_pipeline.recommenders.next_movie import NextMovieRecommender  # noqa: E402
from rcmd_pipeline.recommenders.popularity import PopularityRecommender  # noqa: E402
from rcmd_pipeline.recommenders.seq_hybrid import PrevOnly  # noqa: E402
from rcmd_pipeline.recommenders.training import training_window  # noqa: E402

DEMO = ROOT / "data" / "demo"
K = 10
SETTINGS = TransitionSettings(min_movie_ratings=1000, eval_size=3000)
BRANCHES = ("series", "similar", "appeal")
TARGET_FACTOR = 1.5
PICKER_TRIES = 64  # generate._Picker.pick: 64 weighted draws, then uniform over the allowed movies


class Model:
    """The generator's next-movie distribution given its state (``generate.simulate``'s branches)."""

    def __init__(self, movies: list[gen.Movie], series: dict[int, list[int]]):
        self.release = np.array([m.release_ts for m in movies], dtype=np.int64)
        self.collection = [m.collection_id for m in movies]
        self.similar = [list(m.similar) for m in movies]
        self.series = series

    def _series_choice(self, prev: int, ok) -> int | None:
        members = self.series[self.collection[prev]]
        later = [i for i in members if ok(i) and self.release[i] >= self.release[prev]]
        earlier = [i for i in members if ok(i)]
        return (later or earlier or [None])[0]

    def branch_masses(self, prev: int | None, ok) -> tuple[int | None, float, list[int], float, float]:
        """(series choice, its mass, similar options, their total mass, the picker's mass)."""
        if prev is None:
            return None, 0.0, [], 0.0, 1.0
        appeal = 1.0 - (gen.P_SERIES + gen.P_SIMILAR)
        choice, series_mass = None, 0.0
        if self.collection[prev]:
            choice = self._series_choice(prev, ok)
            if choice is None:
                appeal += gen.P_SERIES
            else:
                series_mass = gen.P_SERIES
            similar_share = gen.P_SIMILAR
        else:  # the generator's `elif roll < P_SERIES + P_SIMILAR` takes the series share too
            similar_share = gen.P_SERIES + gen.P_SIMILAR
        options = [i for i in self.similar[prev] if ok(i)]
        if not options:
            appeal += similar_share
            similar_share = 0.0
        return choice, series_mass, options, similar_share, appeal

    def expected_branch(self, prev: int | None, ok, roll: float) -> tuple[str, int | None, list[int]]:
        """The branch the generator takes with this ``roll`` (to check the model against its record)."""
        if prev is not None and self.collection[prev] and roll < gen.P_SERIES:
            choice = self._series_choice(prev, ok)
            return ("series" if choice is not None else "appeal"), choice, []
        if prev is not None and roll < gen.P_SERIES + gen.P_SIMILAR:
            options = [i for i in self.similar[prev] if ok(i)]
            return ("similar" if options else "appeal"), None, options
        return "appeal", None, []

    def distribution(self, weights: np.ndarray, total: float, prev: int | None, seen: np.ndarray,
                     now: int) -> tuple[np.ndarray, np.ndarray]:
        """(next-movie probabilities, the picker's own probabilities) over the catalogue.

        The picker draws by weight up to 64 times and keeps the first allowed movie, else picks
        uniformly among the allowed ones: P(i) = w_i/W * (1 - (1-q)^64)/q + (1-q)^64/n_allowed for
        an allowed i, q the allowed share of the weight.
        """
        ok = ~seen & (self.release <= now)
        pick = picker_distribution(weights, total, ok)
        choice, series_mass, options, similar_mass, appeal = self.branch_masses(prev, lambda i: bool(ok[i]))
        p = appeal * pick
        if choice is not None:
            p[choice] += series_mass
        if options:
            p[options] += similar_mass / len(options)
        return p, pick

    def probability(self, target: int, weights: np.ndarray, total: float, prev: int, ok, ok_weight: float,
                    n_ok: int) -> float:
        """P(next = target) for one target (the scalar form of :meth:`distribution`, used for
        likelihoods): ``ok`` tells allowed movies, ``ok_weight`` their summed weight, ``n_ok`` their count."""
        if not ok(target):
            return 0.0
        q = ok_weight / total
        miss = (1.0 - q) ** PICKER_TRIES
        pick = weights[target] / total * (1.0 - miss) / q + miss / n_ok
        choice, series_mass, options, similar_mass, appeal = self.branch_masses(prev, ok)
        p = appeal * pick
        if choice == target:
            p += series_mass
        if target in options:
            p += similar_mass / len(options)
        return p


def picker_distribution(weights: np.ndarray, total: float, ok: np.ndarray) -> np.ndarray:
    q = float(weights[ok].sum()) / total
    miss = (1.0 - q) ** PICKER_TRIES
    return np.where(ok, weights / total * ((1.0 - miss) / q) + miss / int(ok.sum()), 0.0)


def top_k(p: np.ndarray, k: int = K) -> np.ndarray:
    """Indexes of the k largest probabilities (ties by lower index: any tie-break holds the same mass)."""
    return np.argsort(-p, kind="stable")[:k]


class Recorder:
    """The ``observe`` hook: at every rating, the state oracle's figures and the user's sequence."""

    def __init__(self, model: Model, n_movies: int, candidates: np.ndarray):
        self.model, self.n, self.candidates = model, n_movies, candidates
        self.users: dict[int, dict] = {}
        self.rows: list[tuple] = []
        self.calibration = np.zeros(4)  # appeal steps: count, sum p(choice), sum sum p^2, sum var
        self.max_gap = 0.0  # largest |vector - scalar| probability seen in the cross-check

    def __call__(self, step: gen.Step) -> None:
        user = self.users.get(step.user)
        if user is None:
            cumulative = np.asarray(step.picker.cumulative)
            weights = np.diff(cumulative, prepend=0.0)  # exactly the picker's bisect intervals
            user = self.users[step.user] = {"weights": weights, "total": step.picker.total, "choices": [],
                                            "nows": [], "steps": []}
        if len(step.seen) != len(user["choices"]) or not step.seen.issuperset(user["choices"]):
            raise AssertionError(f"user {step.user}: the hook's seen set differs from the recorded sequence")
        if step.prev != (user["choices"][-1] if user["choices"] else None):
            raise AssertionError(f"user {step.user}: the hook's previous movie differs from the recorded one")
        seen = np.zeros(self.n, dtype=bool)
        seen[list(step.seen)] = True
        p, pick = self.model.distribution(user["weights"], user["total"], step.prev, seen, step.now)
        c = step.choice
        ok = ~seen & (self.model.release <= step.now)
        branch, series_choice, options = self.model.expected_branch(step.prev, lambda i: bool(ok[i]), step.roll)
        if branch != step.branch or (branch == "series" and series_choice != c) or \
                (branch == "similar" and c not in options) or p[c] <= 0.0 or abs(p.sum() - 1.0) > 1e-9:
            raise AssertionError(f"user {step.user}: the model disagrees with the generator's step "
                                 f"({step.branch} -> {c}, model {branch}, p={p[c]})")
        if len(self.rows) % 997 == 0 and step.prev is not None:  # scalar form against the vector form
            scalar = self.model.probability(c, user["weights"], user["total"], step.prev, lambda i: bool(ok[i]),
                                            float(user["weights"][ok].sum()), int(ok.sum()))
            self.max_gap = max(self.max_gap, abs(scalar - p[c]))
        if step.branch == "appeal":
            s2 = float((pick * pick).sum())
            self.calibration += (1, pick[c], s2, float((pick ** 3).sum()) - s2 * s2)
        in_candidates = p * self.candidates
        mass = float(in_candidates.sum())
        best = top_k(in_candidates)
        user["steps"].append(len(self.rows))
        user["choices"].append(c)
        user["nows"].append(step.now)
        self.rows.append((step.user, c, step.now, step.branch, float(p[top_k(p)].sum()),
                          float(in_candidates[best].sum()) / mass if mass > 0 else float("nan"),
                          bool(c in best)))


def strict_oracle(model: Model, user: dict, s: int, movie_ids: np.ndarray, candidates: np.ndarray) -> dict:
    """The strict oracle's posterior for step ``s``: its top-10 mass, whether its list hits, and what
    the pair's second holds (see the module docstring for what the oracle knows).

    Of the pair's second (its ratings in generation order) the oracle sees every rating but the
    next movie, except the one just before it when that one sorts after it (the generator's
    previous movie, which no history shows) or else the one just after it when that one sorts
    after it; the hidden one is summed over (it sorts after the candidate). The candidates are
    those the history's place in the second allows."""
    choices, nows = user["choices"], user["nows"]
    n, t = choices[s], nows[s]
    weights, total = user["weights"], user["total"]
    first, last = s, s + 1  # the second's ratings are choices[first:last]
    while first > 0 and nows[first - 1] == t:
        first -= 1
    while last < len(choices) and nows[last] == t:
        last += 1
    before, after = choices[first:s], choices[s + 1:last]
    prev_hidden = bool(before) and movie_ids[before[-1]] > movie_ids[n]
    next_hidden = bool(after) and movie_ids[after[0]] > movie_ids[n] and not prev_hidden
    facts = {"leaked": any(movie_ids[c] < movie_ids[n] for c in after), "prev_hidden": prev_hidden,
             "long_run": len(before) + len(after) >= 2, "run": last - first}
    known = s - 1 if prev_hidden else s  # the oracle knows the generator's state before this step
    seen = np.zeros(len(movie_ids), dtype=bool)
    seen[choices[:known]] = True
    shown = before[:len(before) - prev_hidden] + (after[1:] if next_hidden else after)
    low = max((movie_ids[c] for c in shown if movie_ids[c] < movie_ids[n]), default=-1)
    high = min((movie_ids[c] for c in shown if movie_ids[c] > movie_ids[n]), default=np.iinfo(np.int64).max)
    allowed = candidates * ((movie_ids > low) & (movie_ids < high))
    ok_now = ~seen & (model.release <= t)
    ok_weight, n_ok = float(weights[ok_now].sum()), int(ok_now.sum())

    def chain(items: list[int], prev: int, taken: set[int]) -> float:
        """P(the generator rates ``items`` next, in order, after ``prev``, ``taken`` rated too)."""
        likelihood, taken = 1.0, set(taken)
        for b in items:
            weight = ok_weight - sum(weights[i] for i in taken)  # every taken movie was allowed
            likelihood *= model.probability(b, weights, total, prev,
                                            lambda i, taken=taken: bool(ok_now[i]) and i not in taken,
                                            weight, n_ok - len(taken))
            if likelihood == 0.0:
                break
            taken.add(b)
            prev = b
        return likelihood

    def after_seen(*movies: int) -> np.ndarray:
        mask = seen.copy()
        mask[list(movies)] = True
        return mask

    if prev_hidden:
        p_hidden, _ = model.distribution(weights, total, choices[known - 1] if known else None, seen, t)
        posterior = np.zeros(len(movie_ids))
        for x in np.flatnonzero(p_hidden):
            x = int(x)
            p_next, _ = model.distribution(weights, total, x, after_seen(x), t)
            p_next *= allowed * (movie_ids < movie_ids[x])  # the hidden one sorts after the candidate
            for c in np.flatnonzero(p_next) if after else ():
                p_next[c] *= chain(after, int(c), {x, int(c)})
            posterior += p_hidden[x] * p_next
        return _close(posterior, n, facts)
    p, _ = model.distribution(weights, total, choices[s - 1] if s else None, seen, t)
    posterior = p * allowed
    for c in np.flatnonzero(posterior) if after else ():
        c = int(c)
        if not next_hidden:
            posterior[c] *= chain(after, c, {c})
            continue
        p_hidden, _ = model.distribution(weights, total, c, after_seen(c), t)
        p_hidden *= movie_ids > movie_ids[c]  # the hidden one sorts after the candidate
        posterior[c] *= float(p_hidden.sum()) if len(after) == 1 else \
            sum(float(p_hidden[y]) * chain(after[1:], int(y), {c, int(y)}) for y in np.flatnonzero(p_hidden))
    return _close(posterior, n, facts)


def _close(posterior: np.ndarray, n: int, facts: dict) -> dict:
    if posterior[n] <= 0.0:
        raise AssertionError("the strict posterior gives the true next movie no probability")
    posterior = posterior / posterior.sum()
    best = top_k(posterior)
    s2 = float((posterior ** 2).sum())
    return {"mass": float(posterior[best].sum()), "hit": bool(n in best), "p_true": float(posterior[n]),
            "s2": s2, "var": float((posterior ** 3).sum()) - s2 * s2, **facts}


def summarize(values: np.ndarray, hits: np.ndarray) -> dict:
    n = len(values)
    mean = float(values.mean())
    half = 1.96 * float(values.std(ddof=1)) / math.sqrt(n) if n > 1 else float("nan")
    luck = 1.96 * math.sqrt(float((values * (1 - values)).sum())) / n
    return {"n": n, "hr": mean, "low": mean - half, "high": mean + half, "realized_spread": luck,
            "oracle_list_hits": float(hits.mean())}


def oracle_of(pairs: pd.DataFrame, recorder: Recorder, model: Model, movie_ids: np.ndarray, candidates: np.ndarray,
              step_of: dict, strict: bool) -> tuple[dict, dict]:
    """Both oracles' figures on ``pairs`` (the strict one if ``strict``), and each pair's groups:
    the branch that generated its next movie and (strict only) what its second holds."""
    steps = np.array([step_of[(u, m)] for u, m in zip(pairs.userId, pairs.movieId, strict=True)])
    rows = [recorder.rows[i] for i in steps]
    branch = np.array([r[3] for r in rows])
    out = {"pairs": len(pairs), "branch_share": {b: float((branch == b).mean()) for b in BRANCHES},
           "unconditioned_top10_mass": float(np.mean([r[4] for r in rows]))}
    figures = {"state": (np.array([r[5] for r in rows]), np.array([r[6] for r in rows]))}
    groups = {"branch": branch}
    if strict:
        index = {s: (u, j) for u, user in recorder.users.items() for j, s in enumerate(user["steps"])}
        results = []
        for s in steps:
            u, j = index[s]
            results.append(strict_oracle(model, recorder.users[u], j, movie_ids, candidates))
        figures["strict"] = (np.array([r["mass"] for r in results]), np.array([r["hit"] for r in results]))
        for fact in ("leaked", "prev_hidden", "long_run"):
            out[fact] = int(sum(r[fact] for r in results))
        # calibration: if the posterior is right, E[p(true next)] = E[sum p^2]
        gap = sum(r["p_true"] - r["s2"] for r in results)
        out["strict_calibration_z"] = gap / math.sqrt(sum(r["var"] for r in results))
        groups["second"] = np.array([("alone" if r["run"] == 1 else f"{min(r['run'], 3)}{'+' * (r['run'] > 2)} "
                                      "in the second") + (", previous hidden" if r["prev_hidden"] else "")
                                     for r in results])
    same = (np.array([r[2] for r in rows]) == pairs.timestamp.to_numpy()).all()
    if not same:
        raise AssertionError("a pair's timestamp differs from its generating step's")
    for name, (values, hits) in figures.items():
        out[name] = summarize(values, hits)
        for by, labels in groups.items():
            out[name][f"by_{by}"] = {g: summarize(values[labels == g], hits[labels == g])
                                     for g in sorted(set(labels), key=_order) if (labels == g).sum() > 1}
    return out, groups


def _order(label: str) -> tuple:
    return (BRANCHES.index(label),) if label in BRANCHES else (label[0] != "a", label)


def next_movie_hits(users, movies, times):
    """``next_movie``'s per-pair hits on the evaluation window, fitted as the pipeline fits it, and the split."""
    split = validation_split(users, movies, times, SETTINGS.min_movie_ratings, SETTINGS.eval_size)
    train = training_window(users, movies, times, split.final_cutoff)
    queries = build_queries(split.evaluation, users, movies, times, 100_000)
    strategy = PrevOnly(NextMovieRecommender(*train, fallback=PopularityRecommender(train[1])), "next_movie")
    actual = split.evaluation["movieId"].to_numpy(np.int64)
    return hits_at_k(strategy.recommend_queries(queries, K), actual, K), split


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    info = print_machine()
    started = time.perf_counter()

    committed = (DEMO / "ratings.csv").read_bytes()
    ratings = pd.read_csv(DEMO / "ratings.csv")
    users, movies_col, times = (ratings[c].to_numpy(np.int64) for c in ("userId", "movieId", "timestamp"))
    counts = ratings.movieId.value_counts()
    popular_ids = set(counts.index[counts >= SETTINGS.min_movie_ratings])
    # A pair's next movie passes the filter counting its own rating: had the generator chosen a movie
    # one rating short, that one would have passed. The oracles' candidates include such movies.
    candidate_ids = set(counts.index[counts >= SETTINGS.min_movie_ratings - 1])

    movies, series_ko = gen.load_catalog()
    movie_ids = np.array([m.movie_id for m in movies], dtype=np.int64)
    candidates = np.array([m.movie_id in candidate_ids for m in movies], dtype=float)
    holder = {}

    def observe(step: gen.Step) -> None:
        if "recorder" not in holder:  # the series table is the generator's own, built inside simulate
            holder["recorder"] = Recorder(Model(movies, step.series), len(movies), candidates)
        holder["recorder"](step)

    replay = gen.simulate(movies, observe=observe)
    if gen.render(movies, series_ko, replay)["ratings.csv"] != committed:
        raise SystemExit("FAILED: the replay does not rebuild data/demo/ratings.csv byte for byte")
    recorder = holder["recorder"]
    model = recorder.model
    generated = sorted((u, int(movie_ids[c]), t) for u, c, t, *_ in recorder.rows)
    if generated != sorted(zip(users.tolist(), movies_col.tolist(), times.tolist(), strict=True)):
        raise SystemExit("FAILED: the observed steps are not the ratings of data/demo/ratings.csv row for row")
    replay_seconds = time.perf_counter() - started
    print(f"replay: {len(recorder.rows):,} steps observed, data/demo/ratings.csv rebuilt byte for byte "
          f"({len(committed):,} bytes) and matched row for row; {replay_seconds:.1f} s")
    n_cal, s_pc, s_p2, s_var = recorder.calibration
    z = (s_pc - s_p2) / math.sqrt(s_var)
    print(f"model checks: every step's branch, series target and similar options as the generator's; "
          f"picker calibration on {int(n_cal):,} appeal steps: mean p(choice) {s_pc / n_cal:.5f} vs "
          f"expected {s_p2 / n_cal:.5f} (z = {z:+.2f}); scalar vs vector form max gap {recorder.max_gap:.1e}")
    if abs(z) > 5 or recorder.max_gap > 1e-12:
        raise SystemExit("FAILED: the picker's distribution does not fit the generator's choices")

    step_of = {}
    for index, (u, c, *_) in enumerate(recorder.rows):
        step_of[(u, int(movie_ids[c]))] = index  # a user never rates a movie twice
    evaluation = build_eval_transitions(users, movies_col, times, SETTINGS)
    nm_hits, split = next_movie_hits(users, movies_col, times)
    if not split.evaluation.equals(evaluation):
        raise AssertionError("validation_split's evaluation window differs from build_eval_transitions'")
    kept = np.isin(movies_col, list(popular_ids))
    all_pairs_count = int(kept.sum()) - len(np.unique(users[kept]))
    every = build_eval_transitions(users, movies_col, times, TransitionSettings(SETTINGS.min_movie_ratings,
                                                                                 all_pairs_count))
    sets, groups = {}, {}
    for label, pairs, strict in (("evaluation", evaluation, True), ("validation", split.validation, True),
                                 ("all_filtered_pairs", every, False)):
        sets[label], groups[label] = oracle_of(pairs, recorder, model, movie_ids, candidates, step_of, strict)
    nm = float(nm_hits.mean())
    nm_by = {by: {g: float(nm_hits[labels == g].mean()) for g in set(labels)}
             for by, labels in groups["evaluation"].items()}
    result = {"machine": info, "settings": {"min_movie_ratings": SETTINGS.min_movie_ratings,
                                            "eval_size": SETTINGS.eval_size, "k": K},
              "popular_movies": len(popular_ids), "candidate_movies": len(candidate_ids), "next_movie_hr": nm,
              "next_movie_by": nm_by,
              "next_movie_interval": hit_ratio_interval(nm_hits),
              "target": TARGET_FACTOR * nm, "sets": sets, "seconds": round(time.perf_counter() - started, 1)}
    print_report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=float))
    return result


def _line(name: str, f: dict) -> str:
    return (f"{name:<31} {f['hr']:.4f} [{f['low']:.4f}, {f['high']:.4f}]  n={f['n']:<6} "
            f"(a realized HR: +-{f['realized_spread']:.4f}; its own lists hit {f['oracle_list_hits']:.4f})")


def print_report(r: dict) -> None:
    nm, target = r["next_movie_hr"], r["target"]
    low, high = r["next_movie_interval"]
    print(f"\n{r['popular_movies']} movies with at least {r['settings']['min_movie_ratings']} ratings "
          f"({r['candidate_movies']} oracle candidates); next_movie HR@10 on the evaluation window {nm:.4f} "
          f"[{low:.4f}, {high:.4f}]; {TARGET_FACTOR}x = {target:.4f}")
    for label, s in r["sets"].items():
        shares = ", ".join(f"{b} {v:.3f}" for b, v in s["branch_share"].items())
        print(f"\n== {label}: {s['pairs']:,} pairs; generating branch: {shares}")
        if "leaked" in s:
            print(f"same second: {s['prev_hidden']} pairs whose generator's previous movie sorts after the next one "
                  f"(no history shows it), {s['leaked']} whose history holds a rating generated after the next one, "
                  f"{s['long_run']} in a second of 3 or more ratings; strict posterior calibration "
                  f"z = {s['strict_calibration_z']:+.2f}")
        print(f"top-10 mass over all movies (not conditioned on the filter): {s['unconditioned_top10_mass']:.4f}")
        for name in ("state", "strict"):
            if name not in s:
                continue
            f = s[name]
            print(_line(name, f) + f"; x next_movie {f['hr'] / nm:.3f}")
            for by in ("branch", "second"):
                for g, h in f.get(f"by_{by}", {}).items():
                    more = f"; next_movie {r['next_movie_by'][by][g]:.4f}" if label == "evaluation" else ""
                    print("   " + _line(g, h) + more)
    ceiling = r["sets"]["evaluation"]["strict"]
    place = ("below the ceiling's interval" if ceiling["low"] > target else
             "above the ceiling's interval" if ceiling["high"] < target else "inside the ceiling's interval")
    print(f"\nceiling on the evaluation window {ceiling['hr']:.4f} [{ceiling['low']:.4f}, {ceiling['high']:.4f}] "
          f"= {ceiling['hr'] / nm:.3f}x next_movie; the 1.5x target {target:.4f} is {place}; {r['seconds']} s in all")


if __name__ == "__main__":
    main()
