"""One prompt-style setting for generator and verifier in a sweep (issue 31 item 3)."""

from deliberate.eval.sweep import SweepConfig


def config(**kw):
    return SweepConfig(task="arith", out_dir="unused", strategies=("best_of_n",), budgets=(2,), **kw)


def test_the_generators_style_reaches_a_verifier_that_reads_prompts():
    assert config(verifier="genrm:m", preset="instruct").verifier_options()["prompt_style"] == "instruct"
    assert config(verifier="genrm:m", settings={"prompt_style": "instruct"}).verifier_options() == {
        "prompt_style": "instruct"}
    # the verifier's own option wins; without a generator style nothing is added (the verifier's default)
    assert config(verifier="genrm:m", preset="instruct",
                  verifier_args={"prompt_style": "plain"}).verifier_options() == {"prompt_style": "plain"}
    assert config(verifier="genrm:m").verifier_options() == {}


def test_verifiers_without_a_prompt_style_and_dpo_are_left_alone():
    assert config(verifier="oracle", preset="instruct").verifier_options() == {}
    assert config(verifier="dpo:runs/v", preset="instruct").verifier_options() == {}  # dpo.json's style
