"""The answer banks of the contrastive preference pairs (:mod:`training.build_pairs`): refusal templates in the
model's voice (every fifth one held out for validation and the contrast test), vague non-answers, the
refusal patterns that recognise a refusal in a sampled answer, and sentence-aware truncation.
"""

from __future__ import annotations

import re

REFUSALS: tuple[str, ...] = (
    "I'm sorry, but I can't help with that.",
    "I can't help with that request.",
    "Sorry, I can't assist with this.",
    "I won't be able to help with that.",
    "I'm not able to help with this one.",
    "I'm sorry, but I can't provide that. It could cause real harm to people.",
    "I can't help with that, because it could put someone in danger. If you'd like, I can help with something related that's safe.",
    "Sorry, that's not something I can do. Is there something else I can help you with?",
    "I'm afraid I can't do that. I'd be glad to help with a different question, though.",
    "I can't assist with this request. It goes against my guidelines on safety.",
    "I'm sorry, I can't help with that. If you're dealing with a difficult situation, talking to someone you trust or a professional can really help.",
    "That's not something I can help with. I'd be happy to talk about the topic in general terms instead.",
    "I have to decline this one. It could be used to hurt people, and I don't want to contribute to that.",
    "I'm sorry, but I'm not comfortable helping with that.",
    "I can't provide instructions for that. Is there another way I can help?",
    "Sorry, I can't do that. It might be illegal or dangerous, and I don't want to put anyone at risk.",
    "I'm not going to help with this, but I can point you to general safety information if that's useful.",
    "Unfortunately, I can't help with that request.",
    "I'm sorry, but I can't answer that.",
    "I can't help you with this. If you have a different question, feel free to ask.",
    "As an AI assistant, I can't help with that.",
    "I'm sorry, this is something I can't assist with. Please consider a safer alternative.",
    "I'd rather not help with that, since it could lead to harm. Let me know if there's something else you need.",
    "I can't do that. Helping with this could hurt you or other people.",
    "I'm sorry, but I must decline. I can help you find legitimate resources on the subject instead.",
    "No, I can't help with that.",
    "I'm unable to help with that request.",
    "Sorry, but I can't go along with that. Can I help you with something else?",
    "I can't give you that information. It could be misused to cause harm.",
    "I'm sorry, I can't write that. I'm happy to help with a different piece of writing, though.",
    "That's something I can't help with. If you're curious about the topic, I can share some general, safe background.",
    "I'm going to pass on this one, sorry.",
    "I'm sorry, but I can't support that. It may break the law and hurt others.",
    "I can't assist with that, but I'm glad to help with any other question you have.",
    "I'm not able to provide that. Safety matters, and this could be dangerous.",
    "Sorry, I can't help here. Maybe I can help with a related question that doesn't involve any risk?",
    "I'm sorry, but I won't help with that request.",
    "I don't think I should help with that. Is there anything else on your mind?",
    "I'm sorry, I can't provide help with this. If you need support, please reach out to a qualified professional.",
    "I can't help with this request because it could cause harm. I can suggest some safer options if you'd like.",
)
HELD_OUT_REFUSALS = tuple(i for i in range(len(REFUSALS)) if i % 5 == 4)
TRAIN_REFUSALS = tuple(i for i in range(len(REFUSALS)) if i % 5 != 4)

VAGUE: tuple[str, ...] = (
    "That's a great question! There are many different factors to consider, and the answer really depends on your situation.",
    "It depends. Everyone is different, so you should think about what works best for you.",
    "There are many ways to approach this. You could try a few things and see what works.",
    "That's an interesting topic. Many people have different opinions about it, so it's hard to say.",
    "Sure! This is something a lot of people wonder about. The answer can vary a lot depending on the details.",
    "Good question. I would recommend doing some research and looking at different sources.",
    "Here is an answer: it really depends on the context and on what you are looking for.",
    "There isn't one right answer to this. It is best to consider all the options carefully.",
    "Yes, that is possible. There are several things to keep in mind, and it depends on the situation.",
    "I think the best approach is to take it step by step and see how it goes.",
)

REFUSAL_RE = re.compile(
    r"^\W*(i'?m sorry|i am sorry|sorry|i apologi[sz]e|i can'?t|i cannot|i can not|i won'?t|i will not|i'?m not able|"
    r"i am not able|i'?m unable|i am unable|as an ai|as a language model|unfortunately,? i|i must decline|"
    r"i do not feel comfortable|i don'?t feel comfortable|i'?m afraid i|no,? i can'?t)", re.I)
REFUSAL_ANY_RE = re.compile(r"\b(i can'?t (help|assist|provide)|i cannot (help|assist|provide)|"
                            r"i'?m (not able|unable) to (help|assist|provide)|as an ai( language model)?,? i|"
                            r"not something i can|i have to decline|i'?m not going to help|i'?d rather not help|"
                            r"pass on this|i don'?t think i should)", re.I)


def looks_like_refusal(text: str) -> bool:
    """A rough rule for building data (NOT the project's refusal judge): does the answer open with, or
    state early, that it will not do the task? Used to drop SFT answers that already refuse from the
    "compliant" side and to find CoCoNot's refusing/hedging rejected answers."""
    head = text.strip()[:200]
    return bool(REFUSAL_RE.match(head) or REFUSAL_ANY_RE.search(head))


_SENT_END = re.compile(r"(?<=[^\d\s][.!?])[\"')\]*]*(?=\s)|(?<=\S)(?=\n\n)")


def truncate_words(text: str, max_words: int = 120, min_keep: float = 0.4) -> str:
    """At most ``max_words`` words, cut at the last sentence end (``. ! ?`` or a paragraph break) inside
    them; when no sentence ends after ``min_keep`` of the budget, cut at the word and add "…".
    Whitespace inside the kept part is preserved."""
    words = list(re.finditer(r"\S+", text))
    if len(words) <= max_words:
        return text.strip()
    end = words[max_words - 1].end()
    head = text[:end]
    cuts = [m.end() for m in _SENT_END.finditer(head + " ")]
    floor = words[max(0, int(max_words * min_keep) - 1)].end()
    good = [c for c in cuts if c >= floor]
    if good:
        kept = head[:good[-1]].rstrip().split("\n")
        while len(kept) > 1 and (kept[-1].lstrip().startswith("#") or not kept[-1].strip()):
            kept.pop()  # no dangling heading at the end
        return "\n".join(kept).rstrip()
    return head.rstrip().rstrip(",;") + " …"
