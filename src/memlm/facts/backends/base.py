"""The interface every fact store backend implements (`memlm.facts.backends`).

A backend holds the facts of many users; every read and write names its user and returns only that
user's facts. `FactBank` and `FactMemory` use nothing else, so the same bank runs on every engine.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from memlm.errors import ConfigError, IncompatibleMemoryError


class FactBackend(ABC):
    """Facts of many users, searched per user (see `memlm.facts.store` for the row semantics)."""

    dimension: int
    encoder: str
    clock: Callable[[], float]

    # --- users -------------------------------------------------------------------------------
    @abstractmethod
    def users(self) -> list[str]: ...

    @abstractmethod
    def has_user(self, user: str) -> bool: ...

    def latest_in_run(self, user: str, run_id: str) -> Any:
        """The user's newest fact of a run (any status), or None: the message a new turn follows."""
        return None

    def scope_in_other_owners(self, field: str, value: str, owner: str) -> bool:
        """Whether facts owned by someone other than `owner` carry `field` (agent_id or run_id) =
        `value`: the API then explains that memlm does not search across users by an agent or a run.
        Only the answer leaves the store, never the facts."""
        return False

    def require_user(self, user: str) -> str:
        from memlm.facts.store import UnknownUserError

        if not self.has_user(user):
            raise UnknownUserError(f"no memories were ever stored for user {user!r}")
        return user

    # --- writing -----------------------------------------------------------------------------
    @abstractmethod
    def add(self, user: str, text: str, embedding: np.ndarray, *, importance: float, **fields: Any) -> Any:
        """Insert one fact and its history entry atomically; `supersedes` ids are marked superseded."""

    def add_many(self, user: str, texts: list[str], embeddings: np.ndarray, *, importance: float = 1.0,
                 actor: str | None = None) -> list[int]:
        """Insert many plain facts of one user (bulk loading); returns their ids. Engines write them
        in one transaction (all or none); this default adds them one at a time."""
        return [self.add(user, text, vector, importance=importance, actor=actor).id
                for text, vector in zip(texts, embeddings, strict=True)]

    @abstractmethod
    def update(self, fact_id: int, user: str, text: str | None = None, embedding: np.ndarray | None = None,
               **fields: Any) -> Any: ...

    @abstractmethod
    def delete(self, fact_ids: Iterable[int], user: str, actor: str | None = None) -> int: ...

    def delete_all(self, user: str, actor: str | None = None) -> int:
        self.require_user(user)
        return self.delete([fact.id for fact in self.facts(user, include_inactive=True)], user, actor)

    @abstractmethod
    def touch(self, fact_ids: Iterable[int], user: str) -> None: ...

    # --- reading -----------------------------------------------------------------------------
    @abstractmethod
    def get(self, fact_id: int, user: str | None = None) -> Any: ...

    @abstractmethod
    def facts(self, user: str, category: str | None = None, limit: int | None = None, offset: int = 0,
              order: str = "id", include_inactive: bool = False) -> list[Any]: ...

    @abstractmethod
    def count(self, user: str, include_inactive: bool = False) -> int: ...

    @abstractmethod
    def slot_facts(self, user: str, slot: str, row: int | None = None) -> list[Any]: ...

    @abstractmethod
    def find_duplicate(self, user: str, text: str, row: int | None = None) -> Any: ...

    @abstractmethod
    def history(self, fact_id: int, user: str | None = None) -> list[Any]: ...

    @abstractmethod
    def latents(self, user: str) -> tuple[list[int], list[int | None], list[np.ndarray]]: ...

    @abstractmethod
    def version(self, user: str | None = None) -> int: ...

    @abstractmethod
    def embeddings(self, user: str, ids: list[int]) -> np.ndarray: ...

    # --- search ------------------------------------------------------------------------------
    @abstractmethod
    def search(self, user: str, query: np.ndarray, k: int, row: int | None = None,
               accept: Callable[[Any], bool] | None = None) -> list[tuple[Any, float]]: ...

    @abstractmethod
    def lexical_search(self, user: str, query: str, k: int, row: int | None = None,
                       accept: Callable[[Any], bool] | None = None) -> list[tuple[Any, float]]: ...

    # --- copies (embedded stores only) ---------------------------------------------------------
    def copy_to(self, path: Any) -> None:
        raise ConfigError(f"a {type(self).__name__} is its own persistence; it cannot be copied to a file")

    def replace_with(self, other: Any) -> None:
        raise ConfigError(f"a {type(self).__name__} is its own persistence; it cannot be replaced from a file")

    @abstractmethod
    def close(self) -> None: ...

    # --- shared helpers ----------------------------------------------------------------------
    def _check_vector(self, vector: np.ndarray) -> np.ndarray:
        vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        if vector.shape[0] != self.dimension:
            raise IncompatibleMemoryError(f"embedding has width {vector.shape[0]}, the store holds {self.dimension}")
        if not np.isfinite(vector).all():
            raise ConfigError("embedding contains NaN or infinity")
        return vector

    def _filtered(self, user: str, search: Callable[[int], list[tuple[int, float]]], size: int, k: int,
                  row: int | None, accept: Callable[[Any], bool] | None) -> list[tuple[Any, float]]:
        """The first `k` live facts of `search(n)`'s (id, score) pairs that pass `row` and `accept`,
        asking the index for more candidates while filters leave too few (every backend's search)."""
        now = self.clock()
        want = min(size, k if row is None and accept is None else max(4 * k, 64))
        while True:
            pairs = search(want)
            by_id = {fact.id: fact for fact in self._facts_by_id(user, [i for i, _ in pairs])}
            results = [(by_id[i], s) for i, s in pairs
                       if i in by_id and by_id[i].live(now) and (row is None or by_id[i].row in (None, row))
                       and (accept is None or accept(by_id[i]))]
            if len(results) >= k or want >= size or len(pairs) < want:
                return results[:k]
            want = min(size, want * 4)
