from hypothesis import given, settings
from hypothesis import strategies as st

from igpo.agent.parsing import parse_generation


def test_tool_call_after_reasoning():
    a = parse_generation(
        '<think>need the capital</think>\n<tool_call>\n{"name": "search", "arguments": {"query": "France"}}\n</tool_call>'
    )
    assert (a.kind, a.name, a.arguments, a.error) == ("tool_call", "search", {"query": "France"}, None)


def test_answer_and_first_tag_wins():
    assert parse_generation("so <answer> Paris </answer>").answer == "Paris"
    a = parse_generation('<answer>Paris</answer> <tool_call>{"name": "search"}</tool_call>')
    assert a.kind == "answer"
    b = parse_generation('<tool_call>{"name": "search", "arguments": {"query": "x"}}</tool_call><answer>P</answer>')
    assert b.kind == "tool_call"


def test_malformed_tool_calls_are_tool_calls_with_an_error():
    for text, fragment in [
        ('<tool_call>{"name": "search", "arguments": {"query": }</tool_call>', "not valid JSON"),
        ('<tool_call>{"name": "search"', "not closed"),
        ("<tool_call>[1, 2]</tool_call>", "JSON object"),
        ('<tool_call>{"arguments": {}}</tool_call>', 'no "name"'),
        ('<tool_call>{"name": "search", "arguments": "oops"}</tool_call>', "not a JSON object"),
    ]:
        a = parse_generation(text)
        assert a.kind == "tool_call" and fragment in a.error, (text, a)


def test_string_encoded_arguments_are_accepted():
    a = parse_generation('<tool_call>{"name": "search", "arguments": "{\\"query\\": \\"x\\"}"}</tool_call>')
    assert a.arguments == {"query": "x"} and a.error is None


def test_format_errors():
    assert parse_generation("Paris").kind == "format_error"
    assert parse_generation("<answer>Paris").kind == "format_error"


def test_numbers_past_the_digit_limit_and_deep_nesting_are_malformed_calls():
    for text, fragment in [
        ("<tool_call>" + "1" * 5000 + "</tool_call>", "a number too long"),
        ('<tool_call>{"name": "search", "arguments": {"query": ' + "9" * 5000 + "}}</tool_call>", "a number too long"),
        ("<tool_call>" + "[" * 100_000 + "</tool_call>", "nested too deeply"),
    ]:
        a = parse_generation(text)
        assert a.kind == "tool_call" and fragment in a.error
    a = parse_generation('<tool_call>{"name": "search", "arguments": "' + "7" * 5000 + '"}</tool_call>')
    assert a.kind == "tool_call" and "not a JSON object" in a.error


def assert_well_formed(a):
    assert a.kind in ("tool_call", "answer", "format_error")
    if a.kind == "answer":
        assert a.answer is not None
    if a.kind == "tool_call" and a.error is None:
        assert isinstance(a.name, str) and a.name and isinstance(a.arguments, dict)
    if a.kind == "format_error":
        assert a.error


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('<>/{}":,[] \\answertoolcalname_x1')) | st.characters(), max_size=200))
def test_parser_never_raises(text):
    assert_well_formed(parse_generation(text))


TAG_PIECES = [
    "<tool_call>",
    "</tool_call>",
    "<answer>",
    "</answer>",
    '{"name": "search", "arguments": {"query": "',
    '"}}',
    "<|im_end|>",
    "<|im_start|>",
    "\\ud800",
    "9" * 40,
]


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_parser_never_raises_on_token_sequences(tokenizer, data):
    """What a sampler can return: any ids (special ones included), decoded as the rollout decodes them."""
    pieces = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in TAG_PIECES]
    ids = data.draw(
        st.lists(st.lists(st.integers(0, len(tokenizer) - 1), max_size=8) | st.sampled_from(pieces), max_size=12).map(
            lambda chunks: [i for c in chunks for i in c]
        )
    )
    assert_well_formed(parse_generation(tokenizer.decode(ids, skip_special_tokens=True)))
