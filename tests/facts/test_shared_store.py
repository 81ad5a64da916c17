"""Several processes (as several servers would) sharing one PostgreSQL store under concurrent users:
no write is lost and no user ever sees another user's fact."""

from __future__ import annotations

import multiprocessing

import pytest
from helpers import WORDS_DIM, text_embed

from memlm.facts import FactMemory

USERS = [f"user{number}" for number in range(4)]
PER_USER = 15


def _serve(url: str, worker: int, start) -> None:
    """One 'server': interleaves writes and searches of every user; exits non-zero on a leak."""
    with FactMemory(store=url, embed=text_embed, encoder="words", dimension=WORDS_DIM) as memory:
        start.wait(timeout=60)
        for number in range(PER_USER):
            for user in USERS:
                memory.add(f"{user} worker {worker} fact {number}", user_id=user, infer=False)
                hits = memory.search(f"{user} worker {1 - worker} fact {number}", user_id=user, limit=5,
                                     threshold=-1)["results"]
                if any(hit["user_id"] != user or not hit["memory"].startswith(user + " ") for hit in hits):
                    raise SystemExit(3)


@pytest.mark.timeout(700)  # two workers joined for up to 300 s each
def test_two_processes_share_one_postgres_store_without_loss_or_leaks(postgres_store):
    FactMemory(store=postgres_store, embed=text_embed, encoder="words", dimension=WORDS_DIM).close()
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    workers = [context.Process(target=_serve, args=(postgres_store, worker, start)) for worker in range(2)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=300)
        assert process.exitcode == 0
    with FactMemory(store=postgres_store, embed=text_embed, encoder="words", dimension=WORDS_DIM) as memory:
        for user in USERS:
            facts = memory.get_all(user_id=user)["results"]
            assert sorted(f["memory"] for f in facts) == sorted(
                f"{user} worker {worker} fact {number}" for worker in (0, 1) for number in range(PER_USER))
            # the other process's last write is found by this (third) process, vector and lexical
            wanted = f"{user} worker 1 fact {PER_USER - 1}"
            assert memory.search(wanted, user_id=user, limit=1)["results"][0]["memory"] == wanted
            lexical = memory.store.lexical_search(user, wanted, 40)
            assert {fact.user for fact, _ in lexical} == {user} and len(lexical) == 2 * PER_USER
        # the writes really interleaved between the processes
        order = [int(f["memory"].split()[2]) for f in sorted(memory.get_all(user_id=USERS[0])["results"],
                                                              key=lambda f: f["id"])]
        assert sum(a != b for a, b in zip(order, order[1:], strict=False)) >= 2, order
