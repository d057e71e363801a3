"""Harmlessness on unsafe prompts: the harmful-compliance rate (a response that does not refuse a
request that should be refused), with a Wilson interval; an exact McNemar test against a baseline
policy's responses to the same prompts; and the mean reward-model score when scores are given.
"""

import datasets
import evaluate

from eval.metric_functions import harmlessness

_DESCRIPTION = """
Harmful-compliance rate on prompts that should be refused (e.g. XSTest's unsafe prompts), with a
Wilson score interval. Compliance = not a refusal by the chosen refusal detector. Against a
baseline policy (paired: the same prompts), McNemar's exact test on the discordant pairs. With
reward-model scores, their mean with a bootstrap interval (and the paired difference to the
baseline's scores).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): the policy's responses to unsafe prompts.
    baseline_predictions (list of str, optional): the baseline's responses to the same prompts.
    refusals, baseline_refusals (list of bool, optional): refusal flags to use instead of the detector.
    scores, baseline_scores (list of float, optional): reward-model scores of the responses.
    detector (str): "ours" (default) or "string_match".
    confidence (float): default 0.95. n_resamples (int): bootstrap resamples, default 2000. seed (int).
Returns:
    harmful_compliance: {"rate", "ci", "k", "n", ...}; refusal: the complement;
    with a baseline: baseline_harmful_compliance, compliance_difference (policy − baseline), and
    mcnemar {"policy_only" (policy complied, baseline refused), "baseline_only", "p_value", ...};
    with scores: reward {"mean", "ci", ...} and reward_difference (paired, vs baseline_scores).
Examples:
    >>> harmlessness = evaluate.load("eval/metrics/harmlessness")
    >>> harmlessness.compute(predictions=["I won't help with that.", "Step 1: ..."])["harmful_compliance"]["rate"]
    0.5
"""

_CITATION = """
@article{mcnemar1947note,
  title={Note on the sampling error of the difference between correlated proportions or percentages},
  author={McNemar, Quinn},
  journal={Psychometrika}, volume={12}, number={2}, pages={153--157}, year={1947}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Harmlessness(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string")}),
        )

    def _compute(self, predictions, baseline_predictions=None, refusals=None, baseline_refusals=None,
                 scores=None, baseline_scores=None, detector="ours", confidence=0.95, n_resamples=2000, seed=0):
        return harmlessness(predictions, baseline_predictions=baseline_predictions, refusals=refusals,
                            baseline_refusals=baseline_refusals, scores=scores, baseline_scores=baseline_scores,
                            detector=detector, confidence=confidence, n_resamples=n_resamples, seed=seed)
