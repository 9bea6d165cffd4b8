"""A search strategy of your own, in one file: majority vote among the verifier's better half.

    DELIBERATE_PLUGINS=examples/custom_strategy.py deliberate sweep --task arith \
        --model runs/quickstart/sft/model --verifier noisy:1 \
        --strategies majority,best_of_n,top_half_vote --budgets 4,16 --out runs/top-half

Self-consistency trusts every sample alike; best-of-N trusts the verifier alone. ``top_half_vote``
keeps the samples the verifier scores at or above the median (ties kept), then votes among them.
It only chooses among full samples, so it defines ``select`` and inherits ``run`` (draw ``n``
samples, score them, select): a sweep computes it on the same pool of samples as majority and
best-of-N, at every budget, without generating anything new.
"""

from deliberate.search.base import register_strategy, vote
from deliberate.search.sampling import SampleAndSelect


@register_strategy("top_half_vote")
class TopHalfVote(SampleAndSelect):
    uses = SampleAndSelect.uses + ("aggregation",)  # the settings it reads (a sweep warns about others)

    def needs_verifier(self, settings):
        return True

    def select(self, task, problem, candidates):
        if not candidates:
            return None
        median = sorted((c.score for c in candidates), reverse=True)[(len(candidates) - 1) // 2]
        kept = [c for c in candidates if c.score >= median]
        answer = vote(task, [c.answer for c in kept])
        if answer is None:
            return kept[0]
        return next(c for c in kept if task.normalize(c.answer) == task.normalize(answer))
