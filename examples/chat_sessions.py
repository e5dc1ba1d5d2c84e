"""Sessions holding conversation state: each user's history lives in the worker that serves them.

    python examples/chat_sessions.py [--users 8] [--turns 5] [--workers 2]

A chat "model" keeps every conversation's turns in its worker (a real one would keep a KV cache
or a loaded context there). ``strict_queue`` affinity sends each user's calls back to the worker
holding their history, waiting for it if it is busy, so no turn ever lands on a worker that
has not seen the conversation; users talk concurrently, from threads. When a worker dies, its
users' next call fails once with ``session_worker_unavailable``: the script shows how a caller
restarts that conversation.
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ThreadPoolExecutor

from snakepit import BaseAdapter, Pool, SnakepitError, tool


class ChatModel(BaseAdapter):
    def initialize(self) -> None:
        self.conversations: dict[str, list[str]] = {}

    @tool(description="add a turn to a conversation and answer it")
    def say(self, user: str, text: str) -> dict:
        turns = self.conversations.setdefault(user, [])
        turns.append(text)
        return {"reply": f"({len(turns)} turns so far) you said {text!r}", "pid": os.getpid()}

    @tool(description="forget a conversation")
    def forget(self, user: str) -> None:
        self.conversations.pop(user, None)

    @tool(description="end this worker (to show what a caller sees when a worker dies)")
    def crash(self) -> None:
        os._exit(1)


def converse(pool: Pool, user: str, turns: int) -> tuple[str, set[int], str]:
    with pool.session(user, affinity="strict_queue") as session:
        pids = set()
        for turn in range(1, turns + 1):
            answer = session.execute("say", user=user, text=f"message {turn}")
            pids.add(answer["pid"])
        session.execute("forget", user=user)
        return user, pids, answer["reply"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    opts = parser.parse_args()

    with Pool(ChatModel, size=opts.workers) as pool:
        with ThreadPoolExecutor(max_workers=opts.users) as threads:
            names = [f"user-{i}" for i in range(opts.users)]
            for user, pids, last in threads.map(lambda u: converse(pool, u, opts.turns), names):
                assert len(pids) == 1, "a session's calls all ran in one worker"
                print(f"{user}: worker {pids.pop()}, last reply {last}")

        # A worker dies under a session: its next call says so once, then the session starts afresh.
        with pool.session("dana", affinity="strict_queue") as dana:
            dana.execute("say", user="dana", text="hello")
            try:
                dana.execute("crash")
            except SnakepitError as exc:
                print(f"the worker died: {exc.reason}")
            try:
                dana.execute("say", user="dana", text="are you there?")
            except SnakepitError as exc:
                print(f"the conversation was lost with it: {exc.reason}")
            print(dana.execute("say", user="dana", text="let's start again")["reply"])


if __name__ == "__main__":
    main()
