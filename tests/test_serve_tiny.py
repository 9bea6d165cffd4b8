"""`openai` backend against `deliberate serve` over the real tiny model: same samples as in-process,
also when the server path fails some requests with 500/429."""

from __future__ import annotations

import pytest
from faultproxy import FaultProxy

from deliberate.models.openai import OpenAIBackend
from deliberate.models.sampling import SamplingParams
from deliberate.models.server import serve_in_thread
from deliberate.models.tiny import TinyBackend


def same(a, b):
    """Identical samples; log-probs equal up to float noise (the server batches prompts differently)."""
    assert [[(c.text, c.prompt_tokens, c.completion_tokens, c.finish_reason) for c in r] for r in a] == \
        [[(c.text, c.prompt_tokens, c.completion_tokens, c.finish_reason) for c in r] for r in b]
    for ra, rb in zip(a, b):
        for ca, cb in zip(ra, rb):
            assert (ca.logprobs is None) == (cb.logprobs is None)
            if ca.logprobs is not None:
                assert max(abs(x - y) for x, y in zip(ca.logprobs, cb.logprobs)) < 1e-4


PROMPTS = ["Q: Mia has 3 pens. She finds 4 more. How many pens now?\nA:\n", "Q: Leo has 9 cards. How many cards now?\nA:\n"]


@pytest.fixture(scope="module")
def served(tiny_ckpt):
    local = TinyBackend(tiny_ckpt)
    server, url = serve_in_thread(TinyBackend(tiny_ckpt), model_name="tiny")
    yield local, url
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("params", [SamplingParams(n=4, temperature=1.0, max_tokens=24, seed=11, logprobs=True),
                                    SamplingParams(temperature=0, max_tokens=24, stop=("\n",)),
                                    SamplingParams(n=2, temperature=0.7, top_p=0.9, max_tokens=24, seed=3,
                                                   stop=("=",))])
def test_same_samples_through_server(served, params):
    local, url = served
    remote = OpenAIBackend(url, model="tiny").generate(PROMPTS, params)
    same(remote, local.generate(PROMPTS, params))


def test_same_samples_through_failing_server(served):
    local, url = served
    params = SamplingParams(n=3, temperature=1.0, max_tokens=16, seed=5)
    prompts = PROMPTS * 4
    with FaultProxy(url, plan=["500", "429", "500"], retry_after=0.05) as proxy:
        remote = OpenAIBackend(proxy.base_url, model="tiny", retry_base_delay=0.01).generate(prompts, params)
    assert proxy.counts["500"] == 2 and proxy.counts["429"] == 1
    same(remote, local.generate(prompts, params))
