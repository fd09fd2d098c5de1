"""Token-level chat format: everything the rollout appends to a context, built from the tokenizer's own template.

A trajectory is built by appending ids and never re-rendered, so the template is asked once, up front, for
the pieces that go between generations: the prompt, the end-of-turn suffix of an assistant message, the tool
message (split around its content), and the opening of the next assistant turn. Text the policy does not
control (tool results, questions, answers) is tokenized with every added token read as plain text (special
ones like `<|im_end|>` and the non-special ones some families add, like Qwen's `<tool_call>` and
`</tool_response>`), so a passage holding them cannot change the conversation structure. No model family's
special tokens are written here: they come from the template (or, for a tokenizer without one, from the ChatML
fallback template, usable only when the tokenizer has its control tokens).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

_MARK = "\x00IGPO_CONTENT\x00"

DEFAULT_SYSTEM_PROMPT = (
    "You are a research assistant that answers questions by searching a knowledge base. "
    "Think briefly, then either call the search tool or give the final answer. "
    'To search, write <tool_call>{"name": "search", "arguments": {"query": "your query"}}</tool_call> and wait '
    "for the results. Search as often as you need, one query at a time. When you know the answer, write it as "
    "<answer>short answer</answer>, with no other text inside the tags."
)
# The same instructions for the paper's web_search tool, which takes a list of queries.
WEB_SEARCH_SYSTEM_PROMPT = (
    "You are a research assistant that answers questions by searching the web. "
    "Think briefly, then either call the web_search tool or give the final answer. "
    'To search, write <tool_call>{"name": "web_search", "arguments": {"query": ["your query"]}}</tool_call> '
    "with one to three queries in the list, and wait for the results. Search as often as you need. When you know "
    "the answer, write it as <answer>short answer</answer>, with no other text inside the tags."
)

# ChatML with Hermes-style tools; used only when the tokenizer has no chat template at all.
CHATML_TOOLS_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message.role == 'system' and tools %}"
    "{{- '<|im_start|>system\\n' + message.content + '\\n\\n# Tools\\n\\n<tools>\\n' }}"
    "{%- for tool in tools %}{{- tool | tojson }}{{- '\\n' }}{%- endfor %}"
    "{{- '</tools><|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{{- '<|im_start|>tool\\n<tool_response>\\n' + message.content + '\\n</tool_response><|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


class TemplateError(ValueError):
    """The tokenizer's chat template cannot render the turns a rollout needs."""


@dataclass
class ChatFormat:
    """Ids of the fixed pieces of a multi-turn tool conversation for one tokenizer.

    Attributes:
        stop_ids: token ids that end an assistant generation (end-of-turn token and eos).
        eot_ids: the template's end of an assistant message (e.g. `<|im_end|>\\n`), appended (minus the
            sampled stop token) after every generation.
        tool_pre_ids / tool_post_ids: the tool message around its content, `tool_post_ids` ending with the
            opening of the next assistant turn.
        belief_probe_ids: the belief probe, the text scored before a gold answer (scored context, never part of a
            policy context).
    """

    tokenizer: object
    system_prompt: str
    tools: list[dict]
    belief_probe: str
    chat_template: str | None = None  # override; None = the tokenizer's own (tool-aware) template
    _plain: object = field(default=None, init=False, repr=False)  # the backend reading added tokens as text

    def __post_init__(self):
        tok = self.tokenizer
        self._plain = _plain_text_backend(tok)
        fallback = False
        if self.chat_template is None:
            own = getattr(tok, "chat_template", None)
            fallback = not (isinstance(own, str) and own)
            self.chat_template = CHATML_TOOLS_TEMPLATE if fallback else own
        # A template that ignores `tools` gets the schemas in the system prompt instead.
        self._native_tools = "tools" in self.chat_template
        if not self._native_tools:
            schemas = "\n".join(json.dumps(t) for t in self.tools)
            self.system_prompt = f"{self.system_prompt}\n\nTools:\n<tools>\n{schemas}\n</tools>"

        base = [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": "Q"}]
        with_answer = self._render(base + [{"role": "assistant", "content": _MARK}], add_generation_prompt=False)
        # Hermes convention: a template without tool support still gets results inside <tool_response> tags.
        tool_content = _MARK if self._native_tools else f"<tool_response>\n{_MARK}\n</tool_response>"
        with_tool = self._render(
            base + [{"role": "assistant", "content": _MARK}, {"role": "tool", "content": tool_content}],
            add_generation_prompt=True,
        )
        if not with_tool.startswith(with_answer):
            raise TemplateError("the chat template re-renders earlier turns when a tool message follows")
        eot_text = with_answer[with_answer.index(_MARK) + len(_MARK) :]
        tool_text = with_tool[len(with_answer) :]
        if tool_text.count(_MARK) != 1:
            raise TemplateError("the chat template does not render the content of a `tool` message")
        pre, post = tool_text.split(_MARK)
        self.eot_ids = self._encode_template(eot_text)
        self.tool_pre_ids = self._encode_template(pre)
        self.tool_post_ids = self._encode_template(post)
        self._check_end_of_turn(eot_text, fallback)
        stops = {i for i in (tok.eos_token_id,) if i is not None}
        if self.eot_ids:
            stops.add(self.eot_ids[0])
        self.stop_ids = sorted(stops)
        # The probe is ours, written as the assistant would write it: its added tokens (a `</think>`) count.
        self.belief_probe_ids = self._encode_template(self.belief_probe)

    def _check_end_of_turn(self, eot_text: str, fallback: bool) -> None:
        """The first end-of-turn token stops generation: ordinary text there would end a turn at every `<`."""
        tok = self.tokenizer
        controls = set(tok.all_special_ids) | set(getattr(tok, "added_tokens_decoder", None) or {})
        if not self.eot_ids or self.eot_ids[0] in controls:
            return
        name = getattr(tok, "name_or_path", "") or type(tok).__name__
        if fallback:
            raise TemplateError(
                f"tokenizer {name}: it has no chat template, and the ChatML fallback's end of turn "
                f"{eot_text.strip()!r} is not one of its tokens; use a tokenizer with a chat template "
                "(model.tokenizer)"
            )
        raise TemplateError(
            f"tokenizer {name}: its chat template ends an assistant turn with {eot_text!r}, whose "
            "first token is ordinary text, not a control token that can stop generation"
        )

    def _render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        kwargs = {"tools": self.tools} if self._native_tools else {}
        try:
            return self.tokenizer.apply_chat_template(
                messages,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                chat_template=self.chat_template,
                **kwargs,
            )
        except Exception as e:  # jinja raises its own exception types for unsupported roles
            raise TemplateError(f"the chat template cannot render a tool conversation: {e}") from None

    def _encode_template(self, text: str) -> list[int]:
        """Template text: its special tokens are real control tokens."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode_text(self, text: str) -> list[int]:
        """Untrusted text (questions, tool results, answers): control strings stay plain text."""
        # Lone surrogates (a JSON escape like "\ud800" in a tool call) are not UTF-8: the tokenizer would raise.
        text = text.encode("utf-8", "replace").decode("utf-8")
        if self._plain is not None:
            return self._plain.encode(text, add_special_tokens=False).ids
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def prompt_ids(self, question: str) -> list[int]:
        """System + user turn + the opening of the first assistant turn."""
        pre, q, post = self.prompt_parts(question)
        return pre + q + post

    def prompt_parts(self, question: str) -> tuple[list[int], list[int], list[int]]:
        """`prompt_ids` in three parts: the template before the question, the question, the template after it."""
        text = self._render(
            [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": _MARK}],
            add_generation_prompt=True,
        )
        pre, post = text.split(_MARK)
        return self._encode_template(pre), self.encode_text(question), self._encode_template(post)

    def close_generation(self, generated: list[int]) -> list[int]:
        """Template ids that complete an assistant message after the sampled ids (not trained on)."""
        if generated and generated[-1] in self.stop_ids:  # the sampled stop token stands for eot_ids[0]
            return self.eot_ids[1:]
        return list(self.eot_ids)

    def tool_message_ids(self, result: str) -> list[int]:
        """The tool message holding `result`, then the opening of the next assistant turn."""
        return self.tool_pre_ids + self.encode_text(result) + self.tool_post_ids

    def answer_ids(self, answer: str) -> list[int]:
        return self.encode_text(answer)


def _plain_text_backend(tokenizer):
    """A copy of a fast tokenizer's backend that matches no added token, special or not (None for a slow one).

    `split_special_tokens` alone still matches added tokens that are not special (Qwen's `<tool_call>`), so
    the copy marks every added token special and encodes special tokens as text."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    from tokenizers import Tokenizer

    spec = json.loads(backend.to_str())
    for added in spec.get("added_tokens") or []:
        added["special"] = True
    plain = Tokenizer.from_str(json.dumps(spec))
    plain.encode_special_tokens = True
    plain.no_truncation()
    plain.no_padding()
    return plain
