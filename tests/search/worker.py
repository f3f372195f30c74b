"""``python -m tests.search.worker '<json kwargs>'``: one ``nas.search.runner.search`` with the fake evaluator,
in its own process (for SIGKILL-and-resume and two-worker tests). ``sleep`` slows each evaluation down."""
from __future__ import annotations

import json
import sys

from nas.search.backend import Injected
from nas.search.runner import search
from tests.search.helpers import FakeEvaluator

if __name__ == "__main__":
    kw = json.loads(sys.argv[1])
    sleep = kw.pop("sleep", 0.0)
    search(**kw, progress=False, backend=Injected(lambda space, split: FakeEvaluator(space, split, sleep=sleep)))
