# The main job on the embedded default (README.md "The main job: `make toy`"): the shipped toy base
# (toy-base/, the stand-in for the pretrained Qwen2.5-VL) -> SFT -> AVA-GRPO -> eval, on the toy world.
#   make toy            run every stage into runs/toy/ (a stage whose output exists is skipped)
#   make toy REDO=1     redo every stage
#   make toy-sft        only the toy world and SFT from the base: runs/toy/sft to experiment on (docs/course.md)
#   make toy-rl-only    also the "+AVA-GRPO alone" row (RL from the base)
#   make toy-base       rebuild toy-base/ from scratch: the toy pretraining (docs/toy-base.md)
#   make toy-ablation   the reward ablation of the paper's Table 10 -> runs/toy/ablation/table10.md
#   make toy-vanguard   VANGUARD's curriculum and its baselines, seeds 0 and 1 -> runs/toy-vanguard/table.md (46 min)
#   make toy-vanguard-spatial  + AVA-GRPO from stage 2 without / with the spatial verification reward
#   make rehearsal      Qwen2.5-VL-7B's widths (depth cut) through SFT, RL and eval on this CPU (docs/scale.md)
# Smoke runs, a few steps per stage into runs/toy-smoke/ (README.md "Smoke runs: plumbing, not
# learning"): toy-smoke, toy-base-smoke, toy-ablation-smoke (toy + toy-ablation) and
# toy-vanguard-smoke; tests/test_pipeline.py runs the last three.
# The GPU day: make gpu-check (one GPU, planned under 8 min, docs/performance.md): the 7B shape's RL step
# with LoRA and extras/bench.py -> runs/gpu-check/gpucheck.md
PY ?= python
DATA ?= data/toy
RUN ?= runs/toy
BASE ?= toy-base
SFT_ARGS ?=
RL_ARGS ?=
EVAL_ARGS ?= --max-new-tokens 320
WORLD_ARGS ?=
test_set = --data $(1)/Vad-Reasoning-SFT-test.jsonl --video-root $(1)/videos  # a world's test split
# make splits a path with a space into two words, so --overwrite could clear another run: refuse one
# (the later defaults have none; a value given on the command line or in the environment is seen here).
$(foreach v,DATA RUN VDATA VRUN SMOKE REH,$(if $(word 2,$($(v))),$(error $(v)="$($(v))" holds a space: make \
  splits paths at spaces (and --overwrite could then delete another run); pass a path without one)))
TEST := $(call test_set,$(DATA))

ifdef REDO
FORCE := force
endif

.PHONY: toy toy-sft toy-base toy-base-smoke toy-rl-only toy-ablation toy-ablation-smoke toy-smoke toy-vanguard toy-vanguard-smoke \
	toy-vanguard-spatial rehearsal rehearsal-smoke \
	force clean-toy
# A stage is finished when its `done` stamp exists (touched after the script exits 0), not when its
# first checkpoint (`latest`) appears. A killed stage has checkpoints but no stamp, so the next
# `make toy` continues it with --resume; a stage whose stamp is stale (an earlier stage was redone)
# or REDO=1 starts afresh with --overwrite (the scripts refuse a run directory that holds a run
# without one of the two: extras/flagcheck.py).
RESUME = $(if $(REDO),--overwrite,$(if $(wildcard $(1)/done),--overwrite,$(if $(wildcard $(1)/latest $(1)/step-*),--resume $(1),--overwrite)))

toy: $(RUN)/table.md

toy-sft: $(RUN)/sft/done  # the course's way in: a trained SFT model, no RL, no eval

$(DATA)/toy_world.json: $(FORCE)
	$(PY) -m extras.toy --out $(DATA) $(WORLD_ARGS)

# The toy pretraining (extras/toybase.py, docs/toy-base.md): a world of its own (never the SFT, RL
# or test videos), stage A (the vision tower, dense token labels), stage B (grounded captions with
# the tower frozen), the perception check on the toy test split, then the shipped directory.
PDATA ?= data/toy-pretrain
BRUN ?= runs/toy-base
PRE_ARGS ?=
TOWER_ARGS ?=
CAPTION_ARGS ?= --epochs 8 --lr 1e-3 --batch-size 16 --num-workers 1
BCHECK_ARGS ?=
toy-base: $(DATA)/toy_world.json
	@mkdir -p $(BRUN) && date +%s > $(BRUN)/start  # the recipe's wall clock, for the model card
	$(PY) -m extras.toybase world --out $(PDATA) $(PRE_ARGS)
	$(PY) -m extras.toybase tower --data $(PDATA) --out $(BRUN)/tower $(TOWER_ARGS)
	$(PY) train_sft.py --task caption --preset toy --model $(BRUN)/tower --data $(PDATA)/Toy-Pretrain.jsonl \
		--video-root $(PDATA)/videos --out $(BRUN)/caption --overwrite --freeze-vision $(CAPTION_ARGS)
	$(PY) -m extras.toybase check --model $(BRUN)/caption $(TEST) --json $(BRUN)/check.json $(BCHECK_ARGS)
	$(PY) -m extras.toybase ship --caption-run $(BRUN)/caption --tower $(BRUN)/tower --world $(PDATA) \
		--check $(BRUN)/check.json --seconds $$(( $$(date +%s) - $$(cat $(BRUN)/start) )) --out $(BASE)

$(RUN)/sft/done: $(BASE)/model.safetensors $(DATA)/toy_world.json
	$(PY) train_sft.py --model $(BASE) --preset toy --data $(DATA)/Vad-Reasoning-SFT-train.jsonl \
		--video-root $(DATA)/videos --out $(RUN)/sft $(call RESUME,$(RUN)/sft) $(SFT_ARGS)
	touch $@

$(RUN)/rl/done: $(RUN)/sft/done
	$(PY) train_rl.py --model $(RUN)/sft --data $(DATA)/Vad-Reasoning-RL.jsonl --video-root $(DATA)/videos \
		--length-ranges-from $(DATA)/Vad-Reasoning-SFT-train.jsonl --preset toy --out $(RUN)/rl $(call RESUME,$(RUN)/rl) $(RL_ARGS)
	touch $@

$(RUN)/rl_only/done: $(BASE)/model.safetensors $(DATA)/toy_world.json
	$(PY) train_rl.py --model $(BASE) --data $(DATA)/Vad-Reasoning-RL.jsonl --video-root $(DATA)/videos \
		--length-ranges-from $(DATA)/Vad-Reasoning-SFT-train.jsonl --preset toy --out $(RUN)/rl_only $(call RESUME,$(RUN)/rl_only) $(RL_ARGS)
	touch $@

# the base itself (Table 4's first row): the shipped directory
$(RUN)/eval_base.json: $(BASE)/model.safetensors $(DATA)/toy_world.json
	mkdir -p $(RUN) && ([ $(RUN)/preds_base.jsonl -nt $< ] || rm -f $(RUN)/preds_base.jsonl)
	$(PY) eval.py --model $(BASE) $(TEST) --out $(RUN)/preds_base.jsonl --json $@ --name base $(EVAL_ARGS)

# eval of one stage's model (stem: base, sft, rl, rl_only) into preds_<stem>.jsonl and eval_<stem>.json
$(RUN)/eval_%.json: $(RUN)/%/done
	[ $(RUN)/preds_$*.jsonl -nt $< ] || rm -f $(RUN)/preds_$*.jsonl  # resume unless stale
	$(PY) eval.py --model $(RUN)/$* $(TEST) --out $(RUN)/preds_$*.jsonl --json $@ --name $* $(EVAL_ARGS)

$(RUN)/table.md: $(RUN)/eval_base.json $(RUN)/eval_sft.json $(RUN)/eval_rl.json
	$(PY) eval.py --report $(RUN) $(TEST)

toy-rl-only: $(RUN)/eval_rl_only.json
	$(PY) eval.py --report $(RUN) $(TEST)

# The reward ablation (paper Table 10): RL from the same SFT model, seed and steps, with the reward
# switches of extras/report.py ABLATION_ROWS. AVA-GRPO is the main pipeline's RL run, linked.
ABL := $(RUN)/ablation
ABL_FLAGS_grpo := --no-verification-reward --no-length-reward
ABL_FLAGS_grpo_len := --no-verification-reward
ABL_FLAGS_grpo_ano := --no-length-reward
.PRECIOUS: $(ABL)/%/done $(ABL)/eval_%.json  # finished runs, not intermediates to delete

$(ABL)/%/done: $(RUN)/sft/done
	$(PY) train_rl.py --model $(RUN)/sft --data $(DATA)/Vad-Reasoning-RL.jsonl --video-root $(DATA)/videos \
		--length-ranges-from $(DATA)/Vad-Reasoning-SFT-train.jsonl --preset toy --out $(ABL)/$* $(ABL_FLAGS_$*) $(call RESUME,$(ABL)/$*) $(RL_ARGS)
	touch $@

$(ABL)/eval_%.json: $(ABL)/%/done
	[ $(ABL)/preds_$*.jsonl -nt $< ] || rm -f $(ABL)/preds_$*.jsonl
	$(PY) eval.py --model $(ABL)/$* $(TEST) --out $(ABL)/preds_$*.jsonl --json $@ --name $* $(EVAL_ARGS)

$(ABL)/eval_ava_grpo.json: $(RUN)/eval_rl.json
	mkdir -p $(ABL) && ln -sfn ../rl $(ABL)/ava_grpo && cp $< $@

toy-ablation: $(ABL)/eval_grpo.json $(ABL)/eval_grpo_len.json $(ABL)/eval_grpo_ano.json $(ABL)/eval_ava_grpo.json
	$(PY) eval.py --ablation-report $(ABL) --with-paper

toy-ablation-smoke:
	$(MAKE) toy toy-ablation DATA=$(SMOKE)/data RUN=$(SMOKE) \
		WORLD_ARGS="$(SMOKE_WORLD)" \
		SFT_ARGS="--max-steps 2 --frames 4 --num-workers 0" \
		RL_ARGS="--max-steps 2 --frames 4 --max-new-tokens 16 --num-workers 0" \
		EVAL_ARGS="--max-new-tokens 16 --frames 4 --num-workers 0"

# VANGUARD (docs/vanguard.md), on the shipped toy base, once per seed of V_SEEDS into $(VRUN)/seed<N>:
# stage 1 (a head on the base's frozen features), stage 2 (LoRA, answer + box), stage 3 (LoRA on
# top, P2C-CoT + box); the baselines train one LoRA run from the base for stage 2 + stage 3's steps:
# monolithic (CoT + box from the start) and classification-only (the category alone). One table
# for all seeds: $(VRUN)/table.md. `make -j2 toy-vanguard` runs the seeds side by side. 450 + 450
# steps: the schedule at which the staged model grounds here (V_STEPS2=150 V_STEPS3=150 does not).
# VANGUARD's slot labels and boxes come from SFT-train's rows, of which the paper-shaped default
# world has few (90), so it trains on a world of its own with 240 (its rows carry bbox), whose
# test split is as large as make toy's; the two worlds draw from one renderer and one set of
# texts, and share no video.
VRUN ?= runs/toy-vanguard
VDATA ?= data/toy-vanguard
V_WORLD_ARGS ?= --n-sft 240 --n-rl 240
V_SEEDS ?= 0 1
V_SEED ?= 0
V_STEPS2 ?= 450
V_STEPS3 ?= 450
V_ARGS ?= --lora-rank 16 --lora-train-embeddings
V_HEAD_ARGS ?=
V_ROWS ?= stage3 stage2 mono cls
V_RL_FROM ?= stage2
V_RL_STEPS ?= 60
V_TOTAL = $(shell expr $(V_STEPS2) + $(V_STEPS3))
VTEST = $(call test_set,$(VDATA))
V_BOXES := $(VDATA)/boxes_train.jsonl
V_TRAIN = --boxes $(V_BOXES) --data $(VDATA)/Vad-Reasoning-SFT-train.jsonl --video-root $(VDATA)/videos \
	--preset toy --seed $(V_SEED) $(V_ARGS)
V_MODEL_stage2 = $(BASE)
V_MODEL_stage3 = $(VRUN)/stage2
V_MODEL_mono = $(BASE)
V_MODEL_cls = $(BASE)
V_FLAGS_stage2 = --target grounding --max-steps $(V_STEPS2)
V_FLAGS_stage3 = --target cot --max-steps $(V_STEPS3)
V_FLAGS_mono = --target cot --max-steps $(V_TOTAL)
V_FLAGS_cls = --target label --max-steps $(V_TOTAL)
.PRECIOUS: $(VRUN)/%/done $(VRUN)/eval_%.json $(VDATA)/boxes_%.jsonl

$(VDATA)/toy_world.json: $(FORCE)
	$(PY) -m extras.toy --out $(VDATA) $(WORLD_ARGS) $(V_WORLD_ARGS)

$(VDATA)/boxes_%.jsonl: $(VDATA)/toy_world.json  # the GT boxes of SFT-train / SFT-test
	$(PY) -m extras.vanguard boxes --data $(VDATA)/Vad-Reasoning-SFT-$*.jsonl --video-root $(VDATA)/videos --out $@

$(VRUN)/stage1/done: $(BASE)/model.safetensors $(VDATA)/toy_world.json
	$(PY) -m extras.vanguard stage1 --model $(BASE) --data $(VDATA)/Vad-Reasoning-SFT-train.jsonl \
		--video-root $(VDATA)/videos --seed $(V_SEED) --out $(VRUN)/stage1 $(V_HEAD_ARGS)
	touch $@

$(VRUN)/frame_scores.jsonl: $(VRUN)/stage1/done
	$(PY) -m extras.vanguard scores --model $(BASE) --head $(VRUN)/stage1 $(VTEST) --out $@

# stages 2-3 and the baselines: train_sft.py's --boxes and --target (what `python -m
# extras.vanguard stage2|stage3` runs); a LoRA run is a --model for the next stage, RL and eval.py
$(VRUN)/stage3/done: $(VRUN)/stage2/done
$(VRUN)/%/done: $(BASE)/model.safetensors $(V_BOXES) $(VDATA)/toy_world.json
	$(PY) train_sft.py --model $(V_MODEL_$*) $(V_FLAGS_$*) $(V_TRAIN) --out $(VRUN)/$* $(call RESUME,$(VRUN)/$*)
	touch $@

# every row's boxes against the GT boxes; the staged rows also carry the stage-1 head's frame scores
$(VRUN)/eval_%.json: $(VRUN)/%/done $(VDATA)/boxes_test.jsonl $(VRUN)/frame_scores.jsonl
	[ $(VRUN)/preds_$*.jsonl -nt $< ] || rm -f $(VRUN)/preds_$*.jsonl
	$(PY) eval.py --model $(VRUN)/$* $(VTEST) --out $(VRUN)/preds_$*.jsonl --name $* --json $@ \
		--boxes $(VDATA)/boxes_test.jsonl $(if $(filter stage%,$*),--frame-scores $(VRUN)/frame_scores.jsonl) $(EVAL_ARGS)

# Beyond both papers: AVA-GRPO from the stage-2 model (V_RL_FROM), without and with the spatial
# verification reward (train_rl.py --spatial-verification), scored on box IoU (toy-vanguard-spatial)
$(VRUN)/rl/done $(VRUN)/rl_spatial/done: $(VRUN)/%/done: $(VRUN)/$(V_RL_FROM)/done
	$(PY) train_rl.py --model $(VRUN)/$(V_RL_FROM) --data $(VDATA)/Vad-Reasoning-RL.jsonl --video-root $(VDATA)/videos \
		--length-ranges-from $(VDATA)/Vad-Reasoning-SFT-train.jsonl --preset toy --seed $(V_SEED) --out $(VRUN)/$* \
		--max-steps $(V_RL_STEPS) $(if $(filter rl_spatial,$*),--spatial-verification) $(call RESUME,$(VRUN)/$*) $(RL_ARGS)
	touch $@

# one seed's rows (V_SEED, VRUN=<run>/seed<N>); toy-vanguard runs it for each seed, then the table
toy-vanguard-seed: $(foreach r,$(V_ROWS),$(VRUN)/eval_$(r).json)

V_SEED_GOALS := $(addprefix toy-vanguard-seed-,$(V_SEEDS))
.PHONY: toy-vanguard-seed $(V_SEED_GOALS)
$(V_SEED_GOALS): toy-vanguard-seed-%: $(VDATA)/boxes_train.jsonl $(VDATA)/boxes_test.jsonl
	$(MAKE) toy-vanguard-seed V_SEED=$* VRUN=$(VRUN)/seed$* V_ROWS="$(V_ROWS)" REDO=  # the world is made: once

toy-vanguard: $(V_SEED_GOALS)
	$(PY) -m extras.vanguard table --data $(VDATA)/Vad-Reasoning-SFT-test.jsonl --out $(VRUN) --seeds $(V_SEEDS)

toy-vanguard-spatial:  # + stage 2 -> AVA-GRPO without / with the spatial verification reward
	$(MAKE) toy-vanguard V_ROWS="$(V_ROWS) rl rl_spatial"

toy-vanguard-smoke:
	$(MAKE) toy-vanguard-spatial VRUN=$(SMOKE)/vanguard VDATA=$(SMOKE)/vdata V_WORLD_ARGS="--seed 1" \
		WORLD_ARGS="$(SMOKE_WORLD)" V_STEPS2=2 V_STEPS3=2 \
		V_ARGS="--lora-rank 4 --lora-train-embeddings --frames 4 --num-workers 0" V_HEAD_ARGS="--frames 4 --epochs 2" \
		RL_ARGS="--max-steps 2 --frames 4 --max-new-tokens 16 --num-workers 0" \
		EVAL_ARGS="--max-new-tokens 16 --frames 4 --num-workers 0"

SMOKE ?= runs/toy-smoke
SMOKE_WORLD := --n-sft 8 --n-test 4 --n-rl 8 --frames 16 24
toy-smoke:  # make toy from the shipped base, a few steps per stage
	$(MAKE) toy DATA=$(SMOKE)/data RUN=$(SMOKE) WORLD_ARGS="$(SMOKE_WORLD)" \
		SFT_ARGS="--max-steps 2 --frames 4 --num-workers 0" \
		RL_ARGS="--max-steps 2 --frames 4 --max-new-tokens 16 --num-workers 0" \
		EVAL_ARGS="--max-new-tokens 16 --frames 4 --num-workers 0"

toy-base-smoke:  # make toy-base, a few steps per stage, into $(SMOKE)/toy-base (the shipped one untouched)
	$(MAKE) toy-base DATA=$(SMOKE)/base-data PDATA=$(SMOKE)/pretrain BRUN=$(SMOKE)/toy-base-run BASE=$(SMOKE)/toy-base \
		WORLD_ARGS="$(SMOKE_WORLD)" PRE_ARGS="--n 12 --frames 16 24" TOWER_ARGS="--steps 2 --batch-size 2" \
		CAPTION_ARGS="--max-steps 2 --frames 4 --num-workers 0" BCHECK_ARGS="--max-new-tokens 12"

# The real model's shapes rehearsed on this CPU (extras/rehearsal.py, docs/scale.md "The rehearsal"):
# Qwen2.5-VL's real tokenizer built offline (needs the test extras of requirements.txt), then every
# phase (2 steps full-parameter, 1 with LoRA) at Qwen2.5-VL-7B's widths with 2 decoder layers and 4 vision blocks.
REH ?= runs/rehearsal
REH_TOK ?= runs/qwen-tokenizer
REH_ARGS ?=
$(REH_TOK)/tokenizer.json:
	$(PY) tests/real_qwen_tokenizer.py $(REH_TOK)

rehearsal: $(REH_TOK)/tokenizer.json
	$(PY) -m extras.rehearsal --tokenizer $(REH_TOK) --out $(REH) $(REH_ARGS)

rehearsal-smoke:  # the same phases at the toy preset's widths (tests/test_rehearsal.py)
	$(PY) -m extras.rehearsal --tiny --out $(SMOKE)/rehearsal --steps 1 --max-new-tokens 8 --num-generations 2 \
		--lora-rank 4 $(REH_ARGS)

# The GPU day (docs/performance.md): one AVA-GRPO step of the random full-depth 7B shape with LoRA
# rank 64 and extras/bench.py's rollout and scoring, on one GPU, in under 8 minutes ->
# $(GPU_OUT)/gpucheck.md and gpucheck.json (extras/gpucheck.py). A rerun: GPU_ARGS=--overwrite.
GPU_DEVICE ?= cuda
GPU_OUT ?= runs/gpu-check
GPU_ARGS ?=
.PHONY: gpu-check
gpu-check:
	$(PY) -m extras.gpucheck --device $(GPU_DEVICE) --out $(GPU_OUT) $(GPU_ARGS)

clean-toy:
	rm -rf $(RUN)
