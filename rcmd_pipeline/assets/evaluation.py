"""The evaluation set, the leaderboard and sample recommendations.

``eval_transitions`` reproduces the study's "previous movie → next movie" pairs; ``eval_queries``
stores them once as queries with the users' histories; the per-strategy model and hit-ratio assets
come from the registry (``assets/strategies.py``); the leaderboard and the samples read every
registered strategy's stored results and models.

# No `from __future__ import annotations` in asset modules: Dagster reads Config classes from the
# real annotations.
"""

import time
from collections.abc import Sequence

import numpy as np
import pandas as pd
from dagster import AssetExecutionContext, AssetIn, Config, MetadataValue, Output, asset
from pydantic import Field

from rcmd_pipeline import settings
from rcmd_pipeline.assets import versioning
from rcmd_pipeline.assets.strategies import (
    QUERIES_KEY,
    TRAINING_COLUMNS,
    TUNING_KEY,
    hit_ratio_key,
    model_key,
    stored_models_loader,
    stored_queries,
    study_figures,
)
from rcmd_pipeline.evaluation import TransitionSettings, build_eval_transitions
from rcmd_pipeline.evaluation.chart import leaderboard_png, markdown_image
from rcmd_pipeline.evaluation.report import compare_to_best, leaderboard_markdown, strategy_report
from rcmd_pipeline.evaluation.rerank_choice import RerankOptions
from rcmd_pipeline.evaluation.tuning import (
    TUNING_MAX_RATINGS,
    choose_sequence_parameters,
    decode_selected,
    encode_choice,
)
from rcmd_pipeline.recommenders.content import ContentTable
from rcmd_pipeline.recommenders.history import (
    HISTORY_BINS,
    Queries,
    build_queries,
    history_bin_labels,
    history_lengths,
    queries_to_arrays,
)
from rcmd_pipeline.recommenders.registry import REGISTRY, Needs, Strategy
from rcmd_pipeline.recommenders.rerank import CONTENT_PREFIX
from rcmd_pipeline.recommenders.training import leakage_cutoff
from rcmd_pipeline.resources.lazy_input import LAZY, LazyValue
from rcmd_pipeline.resources.local_state import LocalStateDir
from rcmd_pipeline.resources.vector_store import VectorStore

GROUP = "evaluation"
HISTORY_MAX_LEN = 100_000
"""Histories are kept whole (up to this many ratings): excluding what the user rated needs all of it."""
SETTINGS_ATTRS = ("min_movie_ratings", "eval_size")
"""The evaluation set's settings, carried by its frame (``DataFrame.attrs``, stored in its Parquet file)."""


class EvalTransitionsConfig(Config):
    """The study's settings; lower them for a small data set."""

    min_movie_ratings: int = Field(
        default=1000, ge=1, description="Keep only movies rated at least this many times."
    )
    eval_size: int = Field(default=3000, ge=1, description="How many of the most recent pairs to keep.")


@asset(
    group_name=GROUP,
    kinds={"pandas", "parquet"},
    ins={"movielens_ratings": AssetIn(metadata={"columns": ["userId", "movieId", "timestamp"]},
                                      input_manager_key=LAZY)},
)
def eval_transitions(
    context: AssetExecutionContext, config: EvalTransitionsConfig, local_state: LocalStateDir,
    movielens_ratings: LazyValue,
) -> Output:
    """The most recent "previous movie → next movie" pairs users actually watched (the study's test set).

    Movies rated fewer than ``min_movie_ratings`` times are dropped; each user's ratings are ordered
    by time (ties by movie id) and paired with the user's previous rating; the ``eval_size`` most
    recent pairs are kept (ties by user id, then movie id), so the set is the same on every run.
    The two settings travel with the pairs (:func:`evaluation_settings`), for ``sequence_tuning``.
    """
    version = versioning.inputs_version(context, config=config, upstream=["movielens_ratings"])
    previous = versioning.unchanged_since(context, version, versioning.value_is_stored(context))
    if previous is not None:
        return versioning.kept(context, version, previous)
    settings = TransitionSettings(min_movie_ratings=config.min_movie_ratings, eval_size=config.eval_size)
    ratings = movielens_ratings.arrays(["userId", "movieId", "timestamp"])  # arrays, not a DataFrame
    pairs = build_eval_transitions(ratings["userId"], ratings["movieId"], ratings["timestamp"], settings)
    del ratings
    pairs.attrs.update(min_movie_ratings=settings.min_movie_ratings, eval_size=settings.eval_size)
    return versioning.computed(pairs, version, {
        "dagster/row_count": len(pairs),
        "pair_count": len(pairs),
        "user_count": int(pairs["userId"].nunique()),
        "movie_count": int(pd.unique(pairs[["prev_movieId", "movieId"]].to_numpy().ravel()).size),
        "first_time": MetadataValue.timestamp(float(pairs["timestamp"].min())),
        "last_time": MetadataValue.timestamp(float(pairs["timestamp"].max())),
        "min_movie_ratings": settings.min_movie_ratings,
        "eval_size": settings.eval_size,
    }, data_version=versioning.frame_digest(pairs))


def evaluation_settings(pairs: pd.DataFrame) -> tuple[int, int]:
    """(min_movie_ratings, eval_size) the evaluation ``pairs`` were built with (their frame's ``attrs``,
    kept in the stored Parquet file, so a reader needs no lookup in the instance's event log)."""
    missing = [key for key in SETTINGS_ATTRS if key not in pairs.attrs]
    if missing:
        raise ValueError(f"the stored eval_transitions carries no {missing}: materialize eval_transitions again")
    return tuple(int(pairs.attrs[key]) for key in SETTINGS_ATTRS)


def query_batch(pairs: pd.DataFrame, ratings: dict[str, np.ndarray]) -> Queries:
    """The evaluation pairs as queries with each user's whole history before the pair's next movie
    (``ratings``: the stored ratings' columns as arrays)."""
    return build_queries(pairs, ratings["userId"], ratings["movieId"], ratings["timestamp"], max_len=HISTORY_MAX_LEN)


def _bin_key(label: str) -> str:
    return "pairs_with_history_" + label.replace("-", "_to_").replace(">", "over_")


def queries_metadata(queries: Queries) -> dict:
    """Typed metadata of the stored queries: how many, how long their histories (uncut), per bin."""
    lengths = history_lengths(queries)
    bins = history_bin_labels(queries)
    labels = ["0", *(label for _, _, label in HISTORY_BINS)]
    rows = ["| earlier ratings | pairs |", "|---|---:|"] + [f"| {label} | {int((bins == label).sum()):,} |"
                                                         for label in labels]
    return {
        "pairs": len(queries),
        "history_items": len(queries.items),
        "mean_history_length": MetadataValue.float(round(float(lengths.mean()), 2) if len(lengths) else 0.0),
        "median_history_length": MetadataValue.float(float(np.median(lengths)) if len(lengths) else 0.0),
        "max_history_length": int(lengths.max()) if len(lengths) else 0,
        **{_bin_key(label): int((bins == label).sum()) for label in labels},
        "history_bins": MetadataValue.md("\n".join(rows)),
        "max_len": HISTORY_MAX_LEN,
    }


@asset(
    name=QUERIES_KEY,
    group_name=GROUP,
    kinds={"python", "numpy"},
    ins={"movielens_ratings": AssetIn(metadata={"columns": TRAINING_COLUMNS}, input_manager_key=LAZY),
         "eval_transitions": AssetIn(input_manager_key=LAZY)},
)
def eval_queries(context: AssetExecutionContext, local_state: LocalStateDir, movielens_ratings: LazyValue,
                 eval_transitions: LazyValue) -> Output:
    """The evaluation pairs as queries with context, built once per run: each pair's user, moment and
    previous movie, and the user's whole history before the pair's next movie in the evaluation set's
    order (time, then movie id; ``recommenders/history.py``). Stored as flat arrays (offsets and
    movie ids); the hit ratios of the strategies that read histories and the leaderboard's split by
    history length load them instead of reading the 32 M ratings again.
    """
    version = versioning.inputs_version(context, upstream=["movielens_ratings", "eval_transitions"],
                                        extra={"max_len": HISTORY_MAX_LEN})
    previous = versioning.unchanged_since(context, version, versioning.value_is_stored(context))
    if previous is not None:
        return versioning.kept(context, version, previous)
    started = time.perf_counter()
    pairs = eval_transitions.load()
    queries = query_batch(pairs, movielens_ratings.arrays(TRAINING_COLUMNS))
    arrays = queries_to_arrays(queries)
    metadata = {
        **queries_metadata(queries),
        "stored_megabytes": MetadataValue.float(round(sum(a.nbytes for a in arrays.values()) / 2**20, 3)),
        "build_seconds": MetadataValue.float(round(time.perf_counter() - started, 3)),
    }
    return versioning.computed(arrays, version, metadata, data_version=versioning.arrays_digest(arrays))


def window_popularity(ratings: dict[str, np.ndarray], cutoff: int) -> tuple[pd.Series, int]:
    """(movie id -> ratings strictly before ``cutoff``, for the movies rated there; how many distinct
    movies all the ratings hold). MovieLens-sized ids are counted piece by piece in a table indexed by
    movie id, instead of a filtered copy of 32 M ratings hashed by pandas."""
    movies, times = ratings["movieId"], ratings["timestamp"]
    if len(movies) == 0 or int(movies.min()) < 0 or int(movies.max()) >= 1 << 26:
        frame = pd.DataFrame({"movieId": movies, "timestamp": times})
        return (frame.loc[frame["timestamp"] < cutoff, "movieId"].value_counts(),
                int(frame["movieId"].nunique()))
    size = int(movies.max()) + 1
    before, seen = np.zeros(size, dtype=np.int64), np.zeros(size, dtype=np.int64)
    piece = 1 << 22
    for start in range(0, len(movies), piece):
        ids = movies[start: start + piece]
        before += np.bincount(ids[times[start: start + piece] < cutoff], minlength=size)
        seen += np.bincount(ids, minlength=size)
    rated = np.flatnonzero(before)
    return (pd.Series(before[rated], index=pd.Index(rated, name="movieId"), name="count"),
            int(np.count_nonzero(seen)))


class SequenceTuningConfig(Config):
    """What is not tuned: the cut-off k and SLIST's item set."""

    k: int = Field(default=10, ge=1, description="HitRatio@k chosen for on validation.")
    slist_min_count: int = Field(default=5, ge=1, description="SLIST learns only movies rated at least this often "
                                                              "in the training window ...")
    slist_max_items: int = Field(default=3000, ge=1, description="... and at most this many of them, the most rated "
                                                                 "(its matrices are dense: 3,000 movies, 36 MB each).")
    max_training_ratings: int = Field(
        default=TUNING_MAX_RATINGS, ge=1,
        description="The models for choosing learn from at most this many of the most recent ratings before the "
                    "validation window (MovieLens 32M: 2 M of 28 M, so choosing costs a small share of the fits; "
                    "smaller data sets use all of theirs). The model assets refit the chosen values on everything.")


def _grid_markdown(table: pd.DataFrame, top: int = 12) -> str:
    """The best ``top`` settings of one strategy's validation table, best first."""
    table = table.sort_values("hit_ratio", ascending=False, kind="stable").head(top)
    columns = [c for c in table.columns if c != "n"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(f"{v:.4f}" if c.startswith("hit_ratio") else str(v)
                                for c, v in zip(columns, row, strict=True))
              + " |" for row in table[columns].itertuples(index=False)]
    return "\n".join(lines)


def build_sequence_tuning(registry: Sequence[Strategy] = REGISTRY):
    """``sequence_tuning`` for the strategies of ``registry``: with ``seq_rerank`` among them, it also
    chooses and fits the re-ranker (and its version says so: adding or removing it recomputes)."""
    rerank = any(strategy.name == "seq_rerank" for strategy in registry)
    ins = {"movielens_ratings": AssetIn(metadata={"columns": ["userId", "movieId", "timestamp"]},
                                        input_manager_key=LAZY),
           "eval_transitions": AssetIn(metadata={"columns": ["timestamp"]}, input_manager_key=LAZY)}
    if rerank:  # the re-ranker's content part: genres, language, series and votes of the TMDB details
        ins["tmdb_movie_info_kr"] = AssetIn(input_manager_key=LAZY)

    @asset(group_name=GROUP, kinds={"python", "numpy"}, ins=ins)
    def sequence_tuning(context: AssetExecutionContext, config: SequenceTuningConfig, local_state: LocalStateDir,
                        movielens_ratings: LazyValue, eval_transitions: LazyValue, **details: LazyValue) -> Output:
        """The parameters of the sequence strategies and the blend weights of ``seq_hybrid``, chosen on a
        validation window; the evaluation window is never used for choosing.

        Validation pairs: the evaluation set's procedure (same ``min_movie_ratings`` and ``eval_size``)
        on the ratings strictly before the earliest evaluation pair, i.e. the ``eval_size`` most recent
        pairs before the evaluation window. Every grid setting is fitted on the ratings strictly before
        the earliest validation pair and scored by validation HitRatio@k; the model assets then refit
        the chosen values on everything before the evaluation window. Only ratings before the
        evaluation window are read. Chosen values and validation scores are in the metadata.
        """
        pairs = eval_transitions.load()  # its timestamps only: small
        settings_ = evaluation_settings(pairs)
        # the TMDB details enter by what the content part reads of them (not the overviews, which change
        # nightly): their version is a digest of the content table
        content = ContentTable.from_frame(details["tmdb_movie_info_kr"].load()) if rerank else None
        version = versioning.inputs_version(
            context, config=config, upstream=["movielens_ratings", "eval_transitions"],
            extra=(*settings_, "seq_rerank", content.digest()) if rerank else settings_)
        previous = versioning.unchanged_since(context, version, versioning.value_is_stored(context))
        if previous is not None:
            return versioning.kept(context, version, previous)
        started = time.perf_counter()
        cutoff = leakage_cutoff(pairs)
        del pairs

        def ratings_before_evaluation() -> tuple:
            """All the choice may read; read inside it, so it can let them go once it has what it needs."""
            window = movielens_ratings.arrays(["userId", "movieId", "timestamp"], below=("timestamp", cutoff))
            return window["userId"], window["movieId"], window["timestamp"]

        choice = choose_sequence_parameters(
            ratings_before_evaluation, cutoff, *settings_, k=config.k,
            fixed={"slist": {"min_count": config.slist_min_count, "max_items": config.slist_max_items}},
            log=context.log.info, max_training_ratings=config.max_training_ratings,
            rerank=RerankOptions(content=content) if rerank else None)
        rows = ["| strategy | validation HitRatio@k | inner split | chosen |", "|---|---:|---:|---|"]
        rows += [f"| {name} | {hr:.4f} | "
                 + (f"{choice.inner_hit_ratio[name]:.4f}" if name in choice.inner_hit_ratio else "")
                 + f" | {_short_choice(choice.chosen.get(name, 'its default (not tuned)'))} |"
                 for name, hr in sorted(choice.validation_hit_ratio.items(), key=lambda kv: -kv[1])]
        metadata = {
            "chosen": MetadataValue.json(_without_arrays(choice.chosen)),
            "selected_on_validation": choice.selected,
            "validation": MetadataValue.md("\n".join(rows) + SELECTION_NOTE),
            **({"seq_rerank_weights": MetadataValue.md(_weights_markdown(choice.chosen["seq_rerank"]))}
               if "seq_rerank" in choice.chosen else {}),
            **{f"inner_hit_ratio_{name}": MetadataValue.float(hr) for name, hr in choice.inner_hit_ratio.items()},
            **{f"grid_{name}": MetadataValue.md(_grid_markdown(table)) for name, table in choice.tables.items()},
            **{f"validation_hit_ratio_{name}": MetadataValue.float(hr)
               for name, hr in choice.validation_hit_ratio.items()},
            "validation_pairs": choice.validation_pairs,
            "validation_training_cutoff": MetadataValue.timestamp(float(choice.tuning_cutoff)),
            "evaluation_training_cutoff": MetadataValue.timestamp(float(choice.final_cutoff)),
            "k": config.k,
            "seconds": MetadataValue.float(round(time.perf_counter() - started, 2)),
        }
        return versioning.computed(encode_choice(choice), version, metadata)

    return sequence_tuning


def _without_arrays(chosen: dict) -> dict:
    """The choice as metadata: the re-ranker's stored content table (thousands of ids) and trees (LightGBM's
    model text, about a megabyte) left out; the table ``seq_rerank_weights`` shows what the trees use."""
    return {name: {key: value for key, value in params.items()
                   if not key.startswith(CONTENT_PREFIX) and key != "booster"}
            for name, params in chosen.items()}


SELECTION_NOTE = (
    "\n\nValidation HitRatio@k: each setting fitted before the validation window and scored on it (the blend's "
    "weights and the re-ranker's fit are chosen on those same pairs, so theirs is in sample). Inner split: the "
    "validation pairs in time order, fitted (weights tuned) on one half and scored on the other, both ways; "
    "`selected_on_validation` is the better of `seq_hybrid` and `seq_rerank` there.")
_ARRAYS = ("part_names", "feature_names", "weights", "mean", "std", "booster")


def _short_choice(chosen) -> str:
    """A chosen setting without the re-ranker's fitted arrays (they have their own table)."""
    return str({k: v for k, v in chosen.items() if k not in _ARRAYS and not k.startswith(CONTENT_PREFIX)}) \
        if isinstance(chosen, dict) else str(chosen)


def _weights_markdown(chosen: dict, top: int = 25) -> str:
    """The re-ranker's largest weights (of standardised features), by absolute value."""
    pairs = sorted(zip(chosen["feature_names"], chosen["weights"], strict=True), key=lambda fw: -abs(fw[1]))
    if chosen.get("booster"):  # trees: each feature's share of their gain
        lines = [f"{len(pairs)} features over {', '.join(chosen['part_names'])}; gradient-boosted trees "
                 f"(LambdaMART): the {min(top, len(pairs))} features with the largest share of the trees' gain:", "",
                 "| feature | share of gain |", "|---|---:|"]
        return "\n".join(lines + [f"| {name} | {share:.4f} |" for name, share in pairs[:top]])
    lines = [f"{len(pairs)} features over {', '.join(chosen['part_names'])}; the {min(top, len(pairs))} largest "
             "weights (standardised features):", "", "| feature | weight |", "|---|---:|"]
    return "\n".join(lines + [f"| {name} | {weight:+.4f} |" for name, weight in pairs[:top]])


LEADERBOARD_RATINGS = ["movieId", "timestamp"]
"""What the leaderboard reads of the ratings: popularity before the evaluation window."""


def build_leaderboard(registry: Sequence[Strategy] = REGISTRY):
    """``strategy_leaderboard`` over every strategy of ``registry`` (and ``sequence_tuning``, for the strategy
    selected on validation, when a strategy of ``registry`` is tuned)."""
    tuned = {TUNING_KEY: AssetIn(input_manager_key=LAZY)} if any(Needs.TUNED in s.needs for s in registry) else {}

    @asset(
        group_name=GROUP,
        kinds={"python", "pandas"},
        ins={
            **{hit_ratio_key(s.name): AssetIn(input_manager_key=LAZY) for s in registry},
            "eval_transitions": AssetIn(input_manager_key=LAZY),
            QUERIES_KEY: AssetIn(input_manager_key=LAZY),
            "tmdb_movie_info_kr": AssetIn(input_manager_key=LAZY),
            "movielens_ratings": AssetIn(metadata={"columns": LEADERBOARD_RATINGS}, input_manager_key=LAZY),
            **tuned,
        },
        required_resource_keys={"local_state"},
    )
    def strategy_leaderboard(context: AssetExecutionContext, **inputs) -> Output:
        """Every strategy side by side, best first: HitRatio@k with its 95% (Wilson) interval, NDCG@k,
        MRR@k, catalogue coverage, mean popularity of what is recommended, the gain over random, the
        exact McNemar p-value against the best strategy on the same pairs, the hit ratio split by whether
        the previous movie is in a series and has an overview and by how many ratings the user made
        before (1, 2-5, 6-20, >20; from the stored ``eval_queries``), the study's figure for reference,
        and a chart of the intervals.

        Popularity counts only ratings before the earliest evaluation pair, like every learned strategy.
        """
        version = versioning.inputs_version(context, upstream=list(inputs))
        previous = versioning.unchanged_since(context, version, versioning.value_is_stored(context))
        if previous is not None:
            return versioning.kept(context, version, previous)
        pairs = inputs["eval_transitions"].load()
        scores = [inputs[hit_ratio_key(s.name)].load() for s in registry]
        cutoff = int(pairs["timestamp"].min())
        popularity, catalog_size = window_popularity(inputs["movielens_ratings"].arrays(LEADERBOARD_RATINGS), cutoff)
        flags = previous_movie_flags(pairs["prev_movieId"].to_numpy(), inputs["tmdb_movie_info_kr"].load())
        board = leaderboard_table(scores, pairs["movieId"].to_numpy(), popularity, catalog_size, flags, registry)
        bins = history_bin_labels(stored_queries(inputs[QUERIES_KEY], pairs))
        selected = decode_selected(inputs[TUNING_KEY].load()) if TUNING_KEY in inputs else None
        return versioning.computed(board.reset_index(drop=True), version,
                                   leaderboard_metadata(board, scores, bins, len(pairs), cutoff, selected))

    return strategy_leaderboard


def previous_movie_flags(prev: np.ndarray, details: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per pair: is the previous movie in a series, does it have an overview (the leaderboard's split)."""
    info = details.set_index("movieId")
    return {
        "in_series": pd.Series(prev).map(info["collection_id"]).fillna(0).to_numpy() > 0,
        "has_overview": pd.Series(prev).map(info["overview"]).fillna("").to_numpy() != "",
    }


def leaderboard_table(scores: list[dict], actual: np.ndarray, popularity: pd.Series, catalog_size: int,
                      flags: dict[str, np.ndarray], registry: Sequence[Strategy]) -> pd.DataFrame:
    """One row per scored strategy (``strategy_report``), compared with the best, with its speed and
    the study's figure."""
    reports = [strategy_report(s["strategy"], s["recommendations"], actual, s["hits"], k=s["k"],
                               popularity=popularity, catalog_size=catalog_size, flags=flags) for s in scores]
    board = compare_to_best(reports, {s["strategy"]: s["hits"] for s in scores})
    board["queries_per_second"] = board["strategy"].map({s["strategy"]: s["queries_per_second"] for s in scores})
    board["study_hit_ratio"] = board["strategy"].map(study_figures(registry))
    return board


def previous_movie_split_markdown(board: pd.DataFrame) -> str:
    """HitRatio per strategy by whether the previous movie is in a series and has an overview."""
    split = ["| strategy | prev in a series | prev in no series | prev with overview | prev without overview |",
             "|---|---:|---:|---:|---:|"]
    for row in board.itertuples():
        cells = [f"{getattr(row, f'hit_ratio_{side}'):.4f} (n={getattr(row, f'n_{side}')})"
                 for side in ("in_series", "not_in_series", "has_overview", "not_has_overview")]
        split.append(f"| {row.strategy} | " + " | ".join(cells) + " |")
    return "\n".join(split)


def leaderboard_metadata(board: pd.DataFrame, scores: list[dict], bins: np.ndarray, pair_count: int,
                         cutoff: int, selected: str | None = None) -> dict:
    """The leaderboard's metadata: the table, its chart, the two splits, and one float per strategy.

    ``best`` is the best on the evaluation window (for the record: choosing by it would be choosing on
    the answers); ``selected_on_validation`` is the strategy ``sequence_tuning`` selected without them,
    with its evaluation figure and its ratio to ``next_movie``."""
    hits = {s["strategy"]: np.asarray(s["hits"], dtype=bool) for s in scores}
    k = int(board["k"].iloc[0])
    metadata = {
        "leaderboard": MetadataValue.md(leaderboard_markdown(board)),
        "leaderboard_chart": MetadataValue.md(markdown_image(leaderboard_png(
            board, f"HitRatio@{k} on {pair_count:,} evaluation pairs (95% Wilson interval)"), "leaderboard chart")),
        "hit_ratio_by_history_length": MetadataValue.md(history_split_markdown(board["strategy"], hits, bins)),
        "hit_ratio_by_previous_movie": MetadataValue.md(previous_movie_split_markdown(board)),
        "best": str(board.iloc[0]["strategy"]),
        **_selected_metadata(board, selected),
        "training_cutoff": MetadataValue.timestamp(float(cutoff)),
        "dagster/row_count": len(board),
    }
    # one float per strategy, so the UI plots each across runs
    metadata.update({f"hit_ratio_{r.strategy}": MetadataValue.float(float(r.hit_ratio)) for r in board.itertuples()})
    return metadata


def _selected_metadata(board: pd.DataFrame, selected: str | None) -> dict:
    rows = board.set_index("strategy")
    if selected is None or selected not in rows.index:
        return {}
    out = {"selected_on_validation": selected,
           "selected_hit_ratio": MetadataValue.float(float(rows.at[selected, "hit_ratio"]))}
    if "next_movie" in rows.index and rows.at["next_movie", "hit_ratio"] > 0:
        out["selected_x_next_movie"] = MetadataValue.float(
            round(float(rows.at[selected, "hit_ratio"] / rows.at["next_movie", "hit_ratio"]), 4))
    return out


def history_split_markdown(order, hits: dict, bins: np.ndarray) -> str:
    """HitRatio per strategy (rows, in ``order``) and history-length bin (columns, with their n)."""
    labels = [label for _, _, label in HISTORY_BINS]
    if (bins == "0").any():
        labels = ["0", *labels]
    head = " | ".join(f"{label} earlier (n={int((bins == label).sum())})" for label in labels)
    lines = [f"| strategy | {head} |", "|---" + "|---:" * len(labels) + "|"]
    for name in order:
        cells = [f"{hits[name][bins == label].mean():.4f}" if (bins == label).any() else "—" for label in labels]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


class SampleConfig(Config):
    movie_ids: list[int] = Field(
        default=[1, 260, 4896, 59315, 2571],
        description="Movies to show every strategy's picks for (MovieLens ids; default Toy Story, Star Wars, "
                    "Harry Potter and the Philosopher's Stone, Iron Man, The Matrix).",
    )
    k: int = Field(default=10, ge=1, description="Picks per strategy.")
    seed: int = Field(default=0, description="Seed of the random strategies.")


def build_sample_recommendations(registry: Sequence[Strategy] = REGISTRY):
    """``sample_recommendations`` for every strategy of ``registry``."""

    @asset(
        group_name=GROUP,
        kinds={"python", "pandas", "qdrant"},
        deps=["movie_vectors"],
        ins={"tmdb_movie_info_kr": AssetIn(input_manager_key=LAZY),
             **{model_key(s.name): AssetIn(input_manager_key=LAZY) for s in registry}},
    )
    def sample_recommendations(
        context: AssetExecutionContext,
        config: SampleConfig,
        vector_store: VectorStore,
        local_state: LocalStateDir,
        tmdb_movie_info_kr: LazyValue,
        **models,
    ) -> Output:
        """Every strategy's picks for a few well-known movies, with Korean title and year: the study's
        ``get_movies(vector_rcmd(1))``, for every strategy of the registry at once, from the stored
        models (nothing is rebuilt). A table per movie in the UI."""
        version = versioning.inputs_version(context, config=config,
                                            upstream=["tmdb_movie_info_kr", "movie_vectors", *models])
        previous = versioning.unchanged_since(context, version, versioning.value_is_stored(context))
        if previous is not None:
            return versioning.kept(context, version, previous)
        collection = settings.qdrant_collection()
        details = tmdb_movie_info_kr.load().set_index("movieId")
        queries = np.array(config.movie_ids, dtype=np.int64)
        unknown = [int(m) for m in queries if m not in details.index]
        if unknown:
            context.log.warning(f"movies not in the catalogue (their rows show random or popular picks): {unknown}")
        label = movie_labeller(details)
        with vector_store.open() as session:
            def neighbours(ids, k):
                return session.neighbours(collection, ids, k)

            strategies = stored_models_loader(models, registry, config.seed, neighbours)
            frame = sample_frame(strategies, queries, config.k, label)
        return versioning.computed(frame, version, sample_tables(frame, queries, list(strategies), label))
    return sample_recommendations


def movie_labeller(details: pd.DataFrame):
    """``movie id -> "Korean title (year)"`` from the details indexed by movie id (``#id`` when unknown)."""

    def label(movie_id: int) -> str:
        if movie_id not in details.index:
            return f"#{movie_id}"
        year = str(details.at[movie_id, "release_date"] or "")[:4]
        return f"{details.at[movie_id, 'title']} ({year})" if year else str(details.at[movie_id, "title"])

    return label


def sample_frame(strategies: dict, queries: np.ndarray, k: int, label) -> pd.DataFrame:
    """One row per (query movie, strategy, rank): the pick and its label (empty for a padded slot)."""
    rows = []
    for name, strategy in strategies.items():
        picks = strategy.recommend(queries, k)
        for query, row in zip(queries, picks, strict=True):
            for rank, movie_id in enumerate(row, start=1):
                rows.append({"query_movieId": int(query), "strategy": name, "rank": rank,
                             "movieId": int(movie_id), "title": label(int(movie_id)) if movie_id > 0 else ""})
    return pd.DataFrame(rows)


def sample_tables(frame: pd.DataFrame, queries: np.ndarray, names: list[str], label) -> dict:
    """A markdown table per query movie: rank by strategy, the picks' labels."""
    metadata = {}
    for query in queries:
        table = frame[frame["query_movieId"] == query].pivot(index="rank", columns="strategy", values="title")[names]
        lines = ["| # | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        lines += [f"| {rank} | " + " | ".join(str(v).replace("|", "/") for v in table.loc[rank]) + " |"
                  for rank in table.index]
        metadata[f"{int(query)} {label(int(query))}"] = MetadataValue.md("\n".join(lines))
    return metadata


def evaluation_assets(registry: Sequence[Strategy] = REGISTRY) -> list:
    """The evaluation set and its queries, the leaderboard and the samples for the strategies of
    ``registry``, and the tuning asset when a strategy needs its choices."""
    tuning = [build_sequence_tuning(registry)] if any(Needs.TUNED in s.needs for s in registry) else []
    return [eval_transitions, eval_queries, *tuning, build_leaderboard(registry),
            build_sample_recommendations(registry)]
