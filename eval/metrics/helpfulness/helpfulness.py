"""Pairwise helpfulness against a baseline policy (SFT): win / tie / lose from a judge that saw
each pair in both orders (a win or a loss only when both orders agree; any disagreement is a tie),
Wilson intervals on each share, the win rate (wins + ties/2)/n with a percentile bootstrap
interval, an exact sign test, and a length-controlled win rate.
"""

import datasets
import evaluate

from eval.metric_functions import helpfulness

_DESCRIPTION = """
Win/tie/lose of a policy against a baseline from a pairwise judge, each pair judged in both orders
(policy shown first, then baseline shown first); disagreement between orders = tie. The
length-controlled win rate is the win probability at zero length difference from a logistic
regression of the outcome on tanh(length difference / sd) (see eval/stats.py).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): the judge's verdict with the POLICY shown first, from the policy's
        point of view: 1 = policy better, 0 = tie, -1 = baseline better.
    references (list of int): the verdict with the BASELINE shown first, same coding (policy's view).
    policy_lengths, baseline_lengths (list of number, optional): response lengths (tokens) for the
        length-controlled win rate.
    confidence (float): default 0.95. n_resamples (int): default 2000. seed (int): default 0.
Returns:
    n, win, tie, lose ({"rate", "ci", "k", "n"}), win_rate ({"rate", "ci"}), sign_test,
    order_agreement (share of pairs whose two verdicts agree), win_rate_policy_first,
    win_rate_baseline_first (position bias shows as a gap), outcomes (combined, per pair), and
    length_controlled ({"rate", "ci", "b0", "b1", "scale", ...}) when lengths are given.
Examples:
    >>> helpfulness = evaluate.load("eval/metrics/helpfulness")
    >>> helpfulness.compute(predictions=[1, 1, -1], references=[1, -1, -1])["win"]["k"]
    1
"""

_CITATION = """
@article{zheng2023secrets,
  title={Secrets of RLHF in Large Language Models Part I: PPO},
  author={Zheng, Rui and others}, journal={arXiv:2307.04964}, year={2023}
}
@article{dubois2024length,
  title={Length-Controlled AlpacaEval: A Simple Way to Debias Automatic Evaluators},
  author={Dubois, Yann and Galambosi, Bal{\\'a}zs and Liang, Percy and Hashimoto, Tatsunori B},
  journal={arXiv:2404.04475}, year={2024}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Helpfulness(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}),
        )

    def _compute(self, predictions, references, policy_lengths=None, baseline_lengths=None, confidence=0.95,
                 n_resamples=2000, seed=0):
        return helpfulness(predictions, references, policy_lengths, baseline_lengths, confidence, n_resamples, seed)
