"""The bake's progress line: elapsed time, and an estimate of the time left once a step has run."""

from fournil.bake.pipeline import SHARE, STEPS, _eta


def test_every_step_has_a_share_and_they_sum_to_one():
    assert set(SHARE) == set(STEPS) and abs(sum(SHARE.values()) - 1) < 1e-9


def test_no_estimate_before_anything_ran():
    assert _eta(0.0, {}, list(STEPS)) == "elapsed 0:00"


def test_the_estimate_scales_the_usual_shares_by_the_speed_seen_so_far():
    # the corpus took twice its usual share of a 1000 s bake: the rest is predicted twice as slow too
    ran = {"corpus": 2 * SHARE["corpus"] * 1000}
    text = _eta(95.0, ran, list(STEPS[1:]))
    left = 2 * 1000 * (1 - SHARE["corpus"])
    assert text == f"elapsed 1:35, about {left / 60:.0f} min left"
    assert _eta(10.0, {**ran, "tokenizer": 5.0}, ["export"]).endswith(" s left")


def test_the_last_lines_name_a_command_for_each_way_to_use_the_model():
    from fournil.bake.pipeline import NEXT

    text = NEXT.format(out="OUT", report="OUT/REPORT.md")
    for command in ("fournil chat OUT/model", "fournil generate OUT/model", "fournil translate OUT/model",
                    "fournil serve OUT/model", "llama-cli -m OUT/model-q8_0.gguf", "OUT/REPORT.md"):
        assert command in text
