"""KL divergence of a policy to the SFT model on the policy's own responses, per token, and the
mean response length.

Inputs are per-token log-probabilities of each response's tokens under the policy and under SFT
(the same base model with the adapter disabled). From them: the k1 estimator mean(log p − log q)
and the non-negative k3 estimator mean((r − 1) − log r) with r = q/p (Schulman, "Approximating KL
divergence"). When the exact per-position KL over the whole vocabulary is supplied (``exact_kl``,
what ``python -m eval`` computes on answers SAMPLED from the policy at temperature 1), it is reported
too and is the headline number: summed over an answer it is never negative, and its mean over
sampled answers is an unbiased estimate of the sequence-level KL (the k1/k3 token estimators are
noisier, and k1 can be negative).
"""

import datasets
import evaluate
from eval.metric_functions import kl


_DESCRIPTION = """
Per-token KL(policy || SFT) on the policy's own responses (k1, k3 and exact per-position KL), with
percentile bootstrap intervals over responses, and the mean response length in tokens.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of list of float): per-token log-probabilities of each response under the policy.
    references (list of list of float): the same tokens' log-probabilities under SFT.
    exact_kl (list of list of float, optional): exact KL(policy || SFT) of the next-token distributions
        at each response position (summed over the vocabulary).
    confidence (float): default 0.95. n_resamples (int): default 1000. seed (int): default 0.
Returns:
    kl_per_token ({"mean", "ci"} — exact when given, else k3), kl_k1_per_token, kl_k3_per_token,
    kl_exact_per_token (when given), kl_exact_per_response ({"mean", "ci", "n"}: nats per answer, when given),
    kl_per_response (mean over responses of the summed KL),
    mean_length_tokens, n_responses, n_tokens.
Examples:
    >>> kl = evaluate.load("eval/metrics/kl")
    >>> kl.compute(predictions=[[-1.0, -2.0]], references=[[-1.0, -2.0]])["kl_k1_per_token"]["mean"]
    0.0
"""

_CITATION = """
@misc{schulman2020kl,
  title={Approximating KL Divergence}, author={Schulman, John},
  howpublished={http://joschu.net/blog/kl-approx.html}, year={2020}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class KL(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("float64")),
                                        "references": datasets.Sequence(datasets.Value("float64"))}),
        )

    def _compute(self, predictions, references, exact_kl=None, confidence=0.95, n_resamples=1000, seed=0):
        return kl(predictions, references, exact_kl, confidence, n_resamples, seed)
