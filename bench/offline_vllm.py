"""vLLM offline (`vllm.LLM.chat`) on the benchmark requests: the served path without HTTP.

Runs in the serving environment (`.venv-serve`), so it imports nothing of the pipeline:
`bench/serving.py` writes a spec (engine arguments, chat messages and sampling settings of
every request, number of passes) and reads back the timings this prints as JSON.

    .venv-serve/bin/python bench/offline_vllm.py spec.json result.json
"""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    from vllm import LLM, SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    with open(sys.argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    started = time.monotonic()
    llm = LLM(**spec["engine"])
    startup_s = time.monotonic() - started

    conversations = [r["messages"] for r in spec["requests"]]
    sampling = [
        SamplingParams(
            temperature=0.0,
            max_tokens=r["max_tokens"],
            seed=spec["engine"].get("seed"),
            structured_outputs=r["structured"] and StructuredOutputsParams(**r["structured"]),
        )
        for r in spec["requests"]
    ]
    passes = []
    for _ in range(spec["passes"]):
        started = time.monotonic()
        outputs = llm.chat(conversations, sampling, use_tqdm=False)
        wall = time.monotonic() - started
        tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
        passes.append({"wall_s": wall, "output_tokens": tokens})
    answers = [o.outputs[0].text for o in outputs]
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump({"startup_s": startup_s, "passes": passes, "answers": answers}, f)


if __name__ == "__main__":  # vLLM's engine starts worker processes that re-import this file
    main()
