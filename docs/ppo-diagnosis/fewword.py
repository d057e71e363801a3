"""Build a tiny few-word Llama (the test's construction) and measure its starting distribution."""
import sys, torch
from pathlib import Path
ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]  # the repository
sys.path.insert(0, str(ROOT))
from rlhf_demo.config import Settings
from rlhf_demo.base_model import load_tokenizer

WORDS = [" blue", " red", " green", " cat", " dog", " sun", " tree", " book"]

def build(path, tok, target=" blue", target_bias=-1.5, eos_bias=-1.0, scale=2.5, sigma=1.0, seed=0, embed_std=0.02):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    m = LlamaForCausalLM(cfg)
    with torch.no_grad():
        m.model.embed_tokens.weight[:, 0] = 1.0  # a constant direction: the final norm passes it at ~sqrt(32)
        W = m.lm_head.weight
        W.zero_()
        ids = [tok.encode(w, add_special_tokens=False)[0] for w in WORDS]
        for i in ids + [tok.eos_token_id]:
            m.model.embed_tokens.weight[i, 1:] = torch.randn(31) * embed_std
            W[i, 1:] = torch.randn(31) * sigma / 32 ** 0.5
            W[i, 0] = scale
        W[ids[WORDS.index(target)], 0] = scale + target_bias / 32 ** 0.5
        W[tok.eos_token_id, 0] = scale + eos_bias / 32 ** 0.5
    m.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path

if __name__ == "__main__":
    torch.set_num_threads(1)
    tok = load_tokenizer(Settings(data_dir=ROOT / "runs"))
    p = build(Path(sys.argv[1]), tok, embed_std=float(sys.argv[2]), scale=float(sys.argv[3]))
    from rlhf_demo.base_model import load_base_model
    from rlhf_demo.generation import GenerationParams, build_prompt_ids, decode_batch
    model, tok2 = load_base_model(Settings(data_dir=ROOT / "runs/ppo-diagnosis/toy-data", base_model=str(p), device="cpu", dtype="float32"))
    prompts = [[{"role": "user", "content": f"Question number {i}: tell me something."}] for i in range(32)]
    ids = [build_prompt_ids(tok2, m_) for m_ in prompts]
    res = decode_batch(model, tok2, ids, [GenerationParams(max_new_tokens=8, temperature=1.0, top_p=1.0, repetition_penalty=1.0, seed=i) for i in range(32)])
    import collections
    c = collections.Counter(t for r in res for t in r.token_ids)
    tot = sum(c.values())
    print({tok2.decode([k]): round(v / tot, 3) for k, v in c.most_common(12)})
    print("eos", sum(r.finish_reason == "eos" for r in res) / 32, "contains blue", sum("blue" in tok2.decode(r.token_ids) for r in res) / 32)
    for r in res[:5]: print(repr(tok2.decode(r.token_ids)), r.finish_reason)
