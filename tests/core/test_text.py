"""Text out of requests and answers (one reading for routing, the cache and pricing), and token estimates."""

from __future__ import annotations

from apps.core.text import answer_text, choice_text, completion_estimate, content_text, last_user_text, text_tokens


def test_text_estimate_never_undercounts_non_ascii() -> None:
    assert text_tokens("abcd" * 10) == 10
    # CJK runs about one token per character; a characters/4 estimate would be a quarter of that.
    assert text_tokens("预算" * 50) >= 100


def test_content_parts_join_with_a_newline_and_parts_without_text_add_nothing() -> None:
    parts = [{"type": "text", "text": "first"}, {"type": "image_url", "image_url": {"url": "x"}},
             {"type": "input_text", "text": "second"}, {"type": "text", "text": 7}]  # fmt: skip
    assert content_text(parts) == "first\nsecond"
    assert content_text("plain") == "plain"
    assert content_text(["a legacy", "prompt array"]) == "a legacy\nprompt array"
    assert content_text(None) == content_text(42) == ""


def test_last_user_text_reads_chat_prompt_or_input() -> None:
    chat = {"messages": [{"role": "user", "content": "old"}, {"role": "assistant", "content": "x"},
                         {"role": "user", "content": [{"type": "text", "text": "new"}]}]}  # fmt: skip
    assert last_user_text(chat) == "new"
    assert last_user_text({"messages": [{"role": "system", "content": "s"}]}) == ""
    assert last_user_text({"prompt": ["one", "two"]}) == "one\ntwo"
    assert last_user_text({"input": "embed me"}) == "embed me"
    assert last_user_text({"model": "m"}) == ""


def test_answer_text_takes_the_first_choice_and_is_empty_for_garbage() -> None:
    assert answer_text({"choices": [{"message": {"content": "hi"}}, {"message": {"content": "no"}}]}) == "hi"
    assert answer_text({"choices": [{"text": "legacy"}]}) == "legacy"
    garbage = ({}, {"choices": "x"}, {"choices": []}, {"choices": [5]}, {"choices": [{"message": {"content": 7}}]})
    for answer in garbage:
        assert answer_text(answer) == ""
    assert choice_text({"delta": {"content": "piece"}}, "delta") == "piece"


def test_completion_estimate_is_four_characters_a_token() -> None:
    assert [completion_estimate(t) for t in ("", "a", "abcd", "abcde")] == [0, 1, 1, 2]
