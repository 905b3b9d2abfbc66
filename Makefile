# The main job on the embedded default (README "Quick start"): toy world -> stage 0 (captioning, the
# toy stand-in for the VLM pretraining Qwen2.5-VL already has) -> SFT -> AVA-GRPO -> eval.
#   make toy            run every stage into runs/toy/ (a stage whose output exists is skipped)
#   make toy REDO=1     redo every stage
#   make toy-rl-only    also the "+AVA-GRPO alone" row (RL from the untrained model)
#   make toy-smoke      a few steps per stage into runs/toy-smoke/ (what CI's pipeline test runs)
#   make toy-ablation   the reward ablation of the paper's Table 10 -> runs/toy/ablation/table10.md
#   make toy-vanguard   VANGUARD's curriculum and its baselines -> runs/toy-vanguard/table.md
#   make toy-vanguard-spatial  + AVA-GRPO from it without / with the spatial verification reward
PY ?= python
DATA ?= data/toy
RUN ?= runs/toy
BASE_ARGS ?=
SFT_ARGS ?=
RL_ARGS ?=
EVAL_ARGS ?= --max-new-tokens 320
CHECK_ARGS ?=
WORLD_ARGS ?=
test_set = --data $(1)/Vad-Reasoning-SFT-test.jsonl --video-root $(1)/videos  # a world's test split
# make splits a path with a space into two words, so --overwrite could clear another run: refuse one
# (the later defaults have none; a value given on the command line or in the environment is seen here).
$(foreach v,DATA RUN VDATA VRUN SMOKE,$(if $(word 2,$($(v))),$(error $(v)="$($(v))" holds a space: make \
  splits paths at spaces (and --overwrite could then delete another run); pass a path without one)))
TEST := $(call test_set,$(DATA))

ifdef REDO
FORCE := force
endif

.PHONY: toy toy-rl-only toy-ablation toy-ablation-smoke toy-smoke toy-vanguard toy-vanguard-smoke \
	toy-vanguard-spatial \
	force clean-toy
# A stage is finished when its `done` stamp exists (touched after the script exits 0), not when its
# first checkpoint (`latest`) appears. A killed stage has checkpoints but no stamp, so the next
# `make toy` continues it with --resume; a stage whose stamp is stale (an earlier stage was redone)
# or REDO=1 starts afresh with --overwrite (the scripts refuse a run directory that holds a run
# without one of the two: extras/flagcheck.py).
RESUME = $(if $(REDO),--overwrite,$(if $(wildcard $(1)/done),--overwrite,$(if $(wildcard $(1)/latest $(1)/step-*),--resume $(1),--overwrite)))

toy: $(RUN)/table.md

# stage 0's own detection (extras/toy.py caption-check): of the test videos, how many does the
# captioner caption with an event exactly when there is one? SFT's detection rarely exceeds it.
$(RUN)/caption_check.json: $(RUN)/base/done
	$(PY) -m extras.toy caption-check --model $(RUN)/base $(TEST) --json $@ $(CHECK_ARGS)

$(DATA)/toy_world.json: $(FORCE)
	$(PY) -m extras.toy --out $(DATA) $(WORLD_ARGS)

# stage 0: the toy base model (random init -> captioner); its tokenizer is trained on all the toy text
$(RUN)/base/done: $(DATA)/toy_world.json
	$(PY) train_sft.py --task caption --data $(DATA)/Toy-Caption.jsonl --video-root $(DATA)/videos \
		--tokenizer-corpus $(DATA)/Vad-Reasoning-SFT-train.jsonl $(DATA)/Toy-Caption.jsonl --out $(RUN)/base $(call RESUME,$(RUN)/base) $(BASE_ARGS)
	touch $@

$(RUN)/sft/done: $(RUN)/base/done
	$(PY) train_sft.py --model $(RUN)/base --preset toy --data $(DATA)/Vad-Reasoning-SFT-train.jsonl \
		--video-root $(DATA)/videos --out $(RUN)/sft $(call RESUME,$(RUN)/sft) $(SFT_ARGS)
	touch $@

$(RUN)/rl/done: $(RUN)/sft/done
	$(PY) train_rl.py --model $(RUN)/sft --data $(DATA)/Vad-Reasoning-RL.jsonl --video-root $(DATA)/videos \
		--length-ranges-from $(DATA)/Vad-Reasoning-SFT-train.jsonl --preset toy --out $(RUN)/rl $(call RESUME,$(RUN)/rl) $(RL_ARGS)
	touch $@

$(RUN)/rl_only/done: $(RUN)/base/done
	$(PY) train_rl.py --model $(RUN)/base --data $(DATA)/Vad-Reasoning-RL.jsonl --video-root $(DATA)/videos \
		--length-ranges-from $(DATA)/Vad-Reasoning-SFT-train.jsonl --preset toy --out $(RUN)/rl_only $(call RESUME,$(RUN)/rl_only) $(RL_ARGS)
	touch $@

# eval of one stage's model (stem: base, sft, rl, rl_only) into preds_<stem>.jsonl and eval_<stem>.json
$(RUN)/eval_%.json: $(RUN)/%/done
	[ $(RUN)/preds_$*.jsonl -nt $< ] || rm -f $(RUN)/preds_$*.jsonl  # resume unless stale
	$(PY) eval.py --model $(RUN)/$* $(TEST) --out $(RUN)/preds_$*.jsonl --json $@ --name $* $(EVAL_ARGS)

$(RUN)/table.md: $(RUN)/caption_check.json $(RUN)/eval_base.json $(RUN)/eval_sft.json $(RUN)/eval_rl.json
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
		WORLD_ARGS="--n-sft 8 --n-test 4 --n-rl 8 --n-caption 8 --frames 16 24" \
		BASE_ARGS="--max-steps 2 --frames 4 --num-workers 0" CHECK_ARGS="--frames 4" \
		SFT_ARGS="--max-steps 2 --frames 4 --num-workers 0" \
		RL_ARGS="--max-steps 2 --frames 4 --max-new-tokens 16 --num-workers 0" \
		EVAL_ARGS="--max-new-tokens 16 --frames 4 --num-workers 0"

# VANGUARD (docs/vanguard.md), on make toy's stage-0 model: stage 1 (a head on its frozen
# features), stage 2 (LoRA, answer + box), stage 3 (LoRA on top, P2C-CoT + box); the baselines
# train one LoRA run from the stage-0 model for stage 2 + stage 3's steps: monolithic (CoT + box
# from the start) and classification-only (the category alone). Every run uses the same seed.
# VANGUARD's slot labels and boxes come from SFT-train's rows, of which the paper-shaped default
# world has few (90), so it trains on a world of its own with 240 (its rows carry bbox), whose
# test split is as large as make toy's. Stage 0 is make toy's captioner: the two worlds draw from
# one renderer and one set of texts, and share no video. (Seed 0 with 240 / 60 / 240 / 2,000 draws
# the very videos the default world had before it took the paper's proportions.)
VRUN ?= runs/toy-vanguard
VDATA ?= data/toy-vanguard
V_WORLD_ARGS ?= --n-sft 240 --n-rl 240
VTEST = $(call test_set,$(VDATA))
V_STEPS2 ?= 300
V_STEPS3 ?= 300
V_ARGS ?= --lora-rank 16 --lora-train-embeddings
V_HEAD_ARGS ?=
V_TOTAL = $(shell expr $(V_STEPS2) + $(V_STEPS3))
V_TRAIN = --data $(VDATA)/Vad-Reasoning-SFT-train.jsonl --video-root $(VDATA)/videos --preset toy $(V_ARGS)
V_BOXES := $(VRUN)/boxes_train.jsonl
V_MODEL_stage2 = $(RUN)/base
V_MODEL_stage3 = $(VRUN)/stage2
V_MODEL_mono = $(RUN)/base
V_MODEL_cls = $(RUN)/base
V_FLAGS_stage2 = stage2 --max-steps $(V_STEPS2)
V_FLAGS_stage3 = stage3 --max-steps $(V_STEPS3)
V_FLAGS_mono = stage3 --max-steps $(V_TOTAL)
V_FLAGS_cls = stage3 --target label --max-steps $(V_TOTAL)
.PRECIOUS: $(VRUN)/%/done $(VRUN)/eval_%.json $(VRUN)/boxes_%.jsonl

$(VDATA)/toy_world.json: $(FORCE)
	$(PY) -m extras.toy --out $(VDATA) $(WORLD_ARGS) $(V_WORLD_ARGS)

$(VRUN)/boxes_%.jsonl: $(VDATA)/toy_world.json  # the GT boxes of SFT-train / SFT-test
	mkdir -p $(VRUN) && $(PY) -m extras.vanguard boxes --data $(VDATA)/Vad-Reasoning-SFT-$*.jsonl \
		--video-root $(VDATA)/videos --out $@

$(VRUN)/stage1/done: $(RUN)/base/done $(VDATA)/toy_world.json
	$(PY) -m extras.vanguard stage1 --model $(RUN)/base --data $(VDATA)/Vad-Reasoning-SFT-train.jsonl \
		--video-root $(VDATA)/videos --out $(VRUN)/stage1 $(V_HEAD_ARGS)
	touch $@

$(VRUN)/frame_scores.jsonl: $(VRUN)/stage1/done
	$(PY) -m extras.vanguard scores --model $(RUN)/base --head $(VRUN)/stage1 $(VTEST) --out $@

$(VRUN)/stage3/done: $(VRUN)/stage2/done
$(VRUN)/%/done: $(RUN)/base/done $(V_BOXES) $(VDATA)/toy_world.json
	$(PY) -m extras.vanguard $(V_FLAGS_$*) --boxes $(V_BOXES) --model $(V_MODEL_$*) $(V_TRAIN) \
		--out $(VRUN)/$* $(call RESUME,$(VRUN)/$*)
	rm -rf $(VRUN)/merged_$*  # a redone or resumed run is merged again (--merge never overwrites)
	$(PY) train_sft.py --merge $(VRUN)/$* --out $(VRUN)/merged_$*  # adapters folded in, for eval.py
	touch $@

# the staged rows carry the stage-1 head's frame scores; every row its boxes against the GT boxes
$(VRUN)/eval_%.json: $(VRUN)/%/done $(VRUN)/boxes_test.jsonl $(VRUN)/frame_scores.jsonl
	[ $(VRUN)/preds_$*.jsonl -nt $< ] || rm -f $(VRUN)/preds_$*.jsonl
	$(PY) eval.py --model $(VRUN)/$(if $(filter rl%,$*),$*,merged_$*) $(VTEST) --out $(VRUN)/preds_$*.jsonl \
		--name $* $(EVAL_ARGS)
	$(PY) eval.py --score $(VRUN)/preds_$*.jsonl --gt $(VDATA)/Vad-Reasoning-SFT-test.jsonl --name $* \
		--boxes $(VRUN)/boxes_test.jsonl $(if $(filter stage%,$*),--frame-scores $(VRUN)/frame_scores.jsonl) --json $@

toy-vanguard: $(VRUN)/eval_stage3.json $(VRUN)/eval_stage2.json $(VRUN)/eval_mono.json $(VRUN)/eval_cls.json
	$(PY) -m extras.vanguard table --data $(VDATA)/Vad-Reasoning-SFT-test.jsonl --out $(VRUN)

# Beyond both papers: AVA-GRPO from the staged model, without and with the spatial verification
# reward (train_rl.py --spatial-verification), scored on box IoU -> the last two rows of table.md
$(VRUN)/rl/done $(VRUN)/rl_spatial/done: $(VRUN)/%/done: $(VRUN)/stage3/done
	$(PY) train_rl.py --model $(VRUN)/merged_stage3 --data $(VDATA)/Vad-Reasoning-RL.jsonl --video-root $(VDATA)/videos \
		--length-ranges-from $(VDATA)/Vad-Reasoning-SFT-train.jsonl --preset toy --out $(VRUN)/$* \
		$(if $(filter rl_spatial,$*),--spatial-verification) $(call RESUME,$(VRUN)/$*) $(RL_ARGS)
	touch $@

toy-vanguard-spatial: toy-vanguard $(VRUN)/eval_rl.json $(VRUN)/eval_rl_spatial.json
	$(PY) -m extras.vanguard table --data $(VDATA)/Vad-Reasoning-SFT-test.jsonl --out $(VRUN)

toy-vanguard-smoke:
	$(MAKE) toy-vanguard-spatial DATA=$(SMOKE)/data RUN=$(SMOKE) VRUN=$(SMOKE)/vanguard \
		VDATA=$(SMOKE)/vdata V_WORLD_ARGS="--seed 1" \
		WORLD_ARGS="--n-sft 8 --n-test 4 --n-rl 8 --n-caption 8 --frames 16 24" \
		BASE_ARGS="--max-steps 2 --frames 4 --num-workers 0" V_STEPS2=2 V_STEPS3=2 \
		V_ARGS="--lora-rank 4 --lora-train-embeddings --frames 4 --num-workers 0" V_HEAD_ARGS="--frames 4 --epochs 2" \
		RL_ARGS="--max-steps 2 --frames 4 --max-new-tokens 16 --num-workers 0" \
		EVAL_ARGS="--max-new-tokens 16 --frames 4 --num-workers 0"

SMOKE ?= runs/toy-smoke
toy-smoke:
	$(MAKE) toy DATA=$(SMOKE)/data RUN=$(SMOKE) \
		WORLD_ARGS="--n-sft 8 --n-test 4 --n-rl 8 --n-caption 8 --frames 16 24" \
		BASE_ARGS="--max-steps 2 --frames 4 --num-workers 0" CHECK_ARGS="--frames 4" \
		SFT_ARGS="--max-steps 2 --frames 4 --num-workers 0" \
		RL_ARGS="--max-steps 2 --frames 4 --max-new-tokens 16 --num-workers 0" \
		EVAL_ARGS="--max-new-tokens 16 --frames 4 --num-workers 0"

clean-toy:
	rm -rf $(RUN)
