"""The sequence-aware strategies by name: they see the user's history before the query, not only the
previous movie.

Three models from the session-based recommendation literature, each learned in closed form from
the training window's rating sequences (every user's ratings ordered by (time, movie id), the
order of ``build_eval_transitions``), plus a blend of them whose weights are tuned on validation:

- ``seq_rules.py``: :class:`SequentialRules` (SR, Ludewig & Jannach 2018), a rule a -> b gains 1/g
  each time b follows a g positions later in a user's sequence (g = 1..``max_gap``, a != b);
- ``item_knn.py``: :class:`ItemKNN`, cosine similarity of items over co-occurrence within
  ``window`` positions of each other in a user's sequence (either order);
- ``slist.py``: :class:`SLIST` (Choi et al., WWW 2021), SLIS + SLIT linear item-item models, one
  matrix solve, on the most rated movies;
- ``seq_hybrid.py``: :class:`SequenceHybrid`, a reciprocal-rank blend of parts (these and
  ``next_movie``).

They share ``user_sequences.py`` (the compact sequences), ``pair_table.py`` (the table of SR and
item-kNN) and ``sequence_scoring.py`` (a query's score from its recent history). State: ``fit``
returns the learned model as a dict of plain numpy arrays (an ``.npz`` asset, no pickles);
``from_state(state, **query_params)`` rebuilds the recommender from it. Give ``fit`` only
``training_window``'s arrays: ``state["last_time"]`` lets a caller assert it. Memory and time at
MovieLens-32M scale: ``docs/evaluation.md``.
"""

from __future__ import annotations

import numpy as np

from rcmd_pipeline.recommenders.item_knn import ItemKNN
from rcmd_pipeline.recommenders.seq_rules import SequentialRules
from rcmd_pipeline.recommenders.slist import SLIST

MODELS = {"seq_rules": SequentialRules, "item_knn": ItemKNN, "slist": SLIST}
"""The sequence models by registry name."""
FIT_PARAMS = {"seq_rules": ("max_gap", "top_k"), "item_knn": ("window", "shrink", "top_k"),
              "slist": ("min_count", "max_items", "window", "alpha", "reg")}
"""The parameters each model's ``fit`` takes; the others (:data:`QUERY_PARAMS`) only change scoring."""
QUERY_PARAMS = ("last_n", "decay", "exclude_seen")


def split_params(name: str, params: dict) -> tuple[dict, dict]:
    """(fit parameters, query parameters) of ``params`` for model ``name``; anything else is an error."""
    fit = {k: v for k, v in params.items() if k in FIT_PARAMS[name]}
    query = {k: v for k, v in params.items() if k in QUERY_PARAMS}
    unknown = set(params) - set(fit) - set(query)
    if unknown:
        raise ValueError(f"unknown parameter(s) {sorted(unknown)} for {name}: expected some of "
                         f"{[*FIT_PARAMS[name], *QUERY_PARAMS]}")
    return fit, query


def with_query_params(state: dict, query: dict) -> dict[str, np.ndarray]:
    """A fitted state plus the query parameters, so the stored state answers queries on its own."""
    return {**state, **{f"query_{k}": np.array(v) for k, v in query.items()}}


def fit_model(name: str, users, movies, times, params: dict) -> dict[str, np.ndarray]:
    """Fit model ``name`` with the fit parameters of ``params``; its query parameters go into the state."""
    fit, query = split_params(name, params)
    return with_query_params(MODELS[name].fit(users, movies, times, **fit), query)


def load_model(name: str, state: dict):
    """The recommender of a state from :func:`fit_model` (its query parameters read from it)."""
    query = {k: np.asarray(state[f"query_{k}"]).item() for k in QUERY_PARAMS if f"query_{k}" in state}
    return MODELS[name].from_state(state, **query)
