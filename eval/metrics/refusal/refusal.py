"""Refusal rate of a set of responses, with a Wilson interval; precision/recall against labels.

Two detectors (see rlhf_demo/refusal/detector.py): "ours" (rules-v1, the default: reads the opening of a
response for declines, redirections and lectures, and checks whether an answer follows) and
"string_match" (XSTest's prefix baseline). With ``labels`` (True = refusal) the module also reports
precision, recall, F1 and accuracy of both detectors.
"""

import datasets
import evaluate

from eval.metric_functions import refusal

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

    def _compute(self, predictions, labels=None, detector="ours", confidence=0.95, refusals=None):
        return refusal(predictions, labels, detector, confidence, refusals=refusals)
