"""Refusal rate of a set of responses, with a Wilson interval; precision/recall against labels.

Two detectors (see rlhf_demo/refusal/detector.py): "ours" (rules-v1, the default: reads the opening of a
response for declines, redirections and lectures, and checks whether an answer follows) and
"string_match" (XSTest's prefix baseline). With ``labels`` (True = refusal) the module also reports
precision, recall, F1 and accuracy of both detectors.
"""

import datasets
import evaluate

from rlhf_demo.refusal.detector import BASELINE_NAME
from rlhf_demo.refusal.detector import DETECTOR_NAME
from rlhf_demo.refusal.detector import detect_refusal
from rlhf_demo.refusal.detector import precision_recall
from rlhf_demo.refusal.detector import xstest_string_match
from eval.stats import proportion

_DESCRIPTION = """
Refusal rate of model responses (a refusal declines, deflects or lectures instead of doing the
task), with a Wilson score interval, measured by the project's rules-v1 detector and by XSTest's
string-match baseline.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): the responses.
    labels (list of bool, optional): gold refusal labels; adds precision/recall of both detectors.
    detector (str): "ours" (default) or "string_match" — which detector gives the headline rate.
    confidence (float): interval level, default 0.95.
Returns:
    refusal: {"rate", "ci": [low, high], "k", "n", ...} from the chosen detector;
    refusal_ours, refusal_string_match: the same for each detector;
    flags: per-response booleans of the chosen detector; rules: the deciding evidence (ours);
    detector, baseline_detector; and with labels: quality_ours, quality_string_match.
Examples:
    >>> refusal = evaluate.load("eval/metrics/refusal")
    >>> refusal.compute(predictions=["I can't help with that.", "Sure: 1. Mix flour ..."])["refusal"]["rate"]
    0.5
"""

_CITATION = """
@inproceedings{rottger2024xstest,
  title={XSTest: A Test Suite for Identifying Exaggerated Safety Behaviours in Large Language Models},
  author={R{\\"o}ttger, Paul and Kirk, Hannah Rose and Vidgen, Bertie and Attanasio, Giuseppe and Bianchi, Federico and Hovy, Dirk},
  booktitle={NAACL},
  year={2024}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Refusal(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string")}),
            reference_urls=["https://github.com/paul-rottger/xstest"],
        )

    def _compute(self, predictions, labels=None, detector="ours", confidence=0.95):
        verdicts = [detect_refusal(p) for p in predictions]
        ours = [v.refusal for v in verdicts]
        strmatch = [xstest_string_match(p) for p in predictions]
        if detector in ("ours", DETECTOR_NAME):
            flags = ours
        elif detector in ("string_match", BASELINE_NAME):
            flags = strmatch
        else:
            raise ValueError(f"unknown detector {detector!r}: use 'ours' or 'string_match'")
        n = len(predictions)
        out = {
            "refusal": proportion(sum(flags), n, confidence),
            "refusal_ours": proportion(sum(ours), n, confidence),
            "refusal_string_match": proportion(sum(strmatch), n, confidence),
            "flags": [bool(f) for f in flags],
            "rules": [v.kind + ": " + v.rule for v in verdicts],
            "detector": DETECTOR_NAME if flags is ours else BASELINE_NAME,
            "baseline_detector": BASELINE_NAME,
        }
        if labels is not None:
            if len(labels) != n:
                raise ValueError(f"labels: {len(labels)} for {n} predictions")
            gold = [bool(x) for x in labels]
            out["quality_ours"] = precision_recall(ours, gold)
            out["quality_string_match"] = precision_recall(strmatch, gold)
        return out
