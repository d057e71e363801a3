"""Gradient norms of the PPO surrogate vs the PPO-ptx term on the embedded model + reward-v0 (one buffer of
8 SFT rollouts from runs/ppo-diagnosis/rollouts.pt, critic fresh and zero): is ptx drowning the policy gradient?"""
import sys, torch
ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]  # the repository
sys.path.insert(0, str(ROOT))
torch.set_num_threads(1)
from pathlib import Path
from rlhf_demo.config import Settings
from rlhf_demo.registry import Registry
from training import ppo as P, losses as L
from training.actor_critic import ActorCriticRoles
settings = Settings(data_dir=ROOT / "runs", device="cpu", dtype="bfloat16")
cfg = P.PPOConfig(reward_model="reward-v0", lora_layers=8, response_length=48, ptx_coef=1.0, ptx_categories="all")
roles = ActorCriticRoles.build(settings, Registry(settings.versions_dir), cfg)
with torch.no_grad():  # a policy a few steps into training: B != 0 so both terms have gradients everywhere
    for p in roles.params("policy"):
        if p.dim() == 2 and p.shape[0] > p.shape[1]:  # lora_B [out, r]
            p.normal_(0, 1e-3)
ro = torch.load(str(ROOT / "runs/ppo-diagnosis/rollouts.pt"), weights_only=False)[1]
idx = torch.arange(8)
sub = P.Rollout(ro.input_ids[idx], ro.attention_mask[idx], ro.response_mask[idx], ro.prompts[:8], ro.responses[:8],
                ro.response_tokens[:8], ro.reached_eos[idx])
ex = P.make_experience(roles, sub, cfg, L.RunningMoments())
ptx = P.PtxData(roles.tokenizer, 8, 0, categories="all")
params = roles.params("policy")
def gnorm(loss):
    g = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.sqrt(sum((x.float() ** 2).sum() for x in g if x is not None)).item()
logp, _ = roles.token_logprobs("policy", sub.input_ids, sub.attention_mask, sub.response_mask, grad=True, trunk=ex.trunk)
pg, _, _ = L.clipped_surrogate_loss(logp, ex.old_logp, ex.advantages, sub.response_mask, 0.2)
g_pg = gnorm(pg)
p_ids, p_attn, p_mask = ptx.batch(1)
p_logp, _ = roles.token_logprobs("policy", p_ids, p_attn, p_mask, grad=True)
pt = -L.masked_mean(p_logp, p_mask)
g_ptx = gnorm(pt)
print(f"grad norm: surrogate {g_pg:.4f}  ptx {g_ptx:.4f}  ratio ptx/surrogate {g_ptx / g_pg:.1f}  (ptx loss {pt.item():.2f})")
