"""URG.compare (urg_ray/model.py): LLM-Blender's "is A better than B", from URG's eq. 6 scores."""

import pytest

QUESTION = "What is the capital of France?"
A, B = "Paris is the capital of France.", "I like trains, and long answers about trains and more trains."


def test_compare_is_whether_a_scores_above_b_when_ranked_together(tiny):
    scores = tiny.rank([QUESTION], [[A, B]]).scores[0]
    assert scores[0] != scores[1]
    assert tiny.compare(QUESTION, A, B) is bool(scores[0] > scores[1])
    assert tiny.compare(QUESTION, B, A) is bool(scores[1] > scores[0])  # the order of A and B does not matter
    assert tiny.compare(QUESTION, A, A) is False  # equal scores: A is not better


def test_compare_on_lists_equals_one_call_per_question(tiny):
    questions = [QUESTION, "Name a colour.", "2+2?"]
    a, b = [A, "blue", "five"], [B, "Colours are nice, red for example.", "4"]
    assert tiny.compare(questions, a, b) == [tiny.compare(q, x, y) for q, x, y in zip(questions, a, b)]


def test_compare_refuses_mixed_or_unequal_inputs(tiny):
    with pytest.raises(TypeError, match="three strings or three lists"):
        tiny.compare(QUESTION, [A], [B])
    with pytest.raises(ValueError, match="one A and one B per question"):
        tiny.compare([QUESTION, QUESTION], [A], [B, A])
