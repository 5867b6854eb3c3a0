"""Run by tests/test_ddp.py under `torchrun --nproc_per_node 2`: one PPO step on two CPU ranks
(gloo DDP through accelerate), each rank on its own half of the prompts. Writes each rank's
weight hash and what it saw to <out>/rank<r>.json."""

import hashlib
import json
import sys
from pathlib import Path

import torch

from pipeline.config import GenerationSection, PPOSection
from pipeline.policy.models import load_policy
from pipeline.policy.ppo import PPOTrainer
from pipeline.policy.rl import accelerator
from pipeline.world.grammar import lexicon_score


def weights_hash(model) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main(model_dir: str, prompts_file: str, out: str) -> None:
    acc = accelerator()
    model, tok = load_policy(model_dir)
    before = weights_hash(model)
    prompts = [json.loads(line)["prompt"]["text"] for line in open(prompts_file)][:32]
    score = lambda texts, prompts=None: torch.tensor([lexicon_score(t).reward for t in texts])
    trainer = PPOTrainer(
        model,
        tok,
        score,
        PPOSection(batch_size=32, mini_batch_size=8, lr=1e-3),
        GenerationSection(max_new_tokens=8),
        acc,
    )
    mine = list(range(len(prompts)))[acc.process_index :: acc.num_processes]
    stats = trainer.step([prompts[i] for i in mine], seed=100 + acc.process_index)
    Path(out, f"rank{acc.process_index}.json").write_text(
        json.dumps(
            {
                "world_size": acc.num_processes,
                "distributed_type": str(acc.distributed_type),
                "before": before,
                "after": weights_hash(trainer.policy),
                "prompts": mine,
                "kl_coef": stats["ppo/kl_coef"],
                "score": stats["ppo/score"],
            }
        )
    )
    acc.wait_for_everyone()
    if torch.distributed.is_initialized():  # gloo aborts at exit without this
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
