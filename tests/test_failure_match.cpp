// tests/test_failure_match.cpp — `failure match`: each catalog entry is found first from its symptom
// phrased three ways, none of them copied from the docs' symptom table, and nonsense finds nothing.
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "probes/failure_match.h"
#include "probes/failures.h"
#include "tests/test_util.h"

namespace reftrain {
namespace {

const std::string kReadme = std::string(REFTRAIN_SOURCE_DIR) + "/docs/failures/README.md";

TEST(FailureMatch, EveryEntryIsFoundFromItsSymptomPhrasedThreeWays) {
    const std::vector<std::pair<std::string, std::vector<std::string>>> queries = {
        {"labels-all-masked", {"my loss is 0.0 right away", "weights don't move and the loss reads zero",
                               "all labels masked out"}},
        {"mask-off-by-one", {"it predicts whatever follows end of turn", "labels and loss mask off by one position",
                             "supervision mask misaligned with targets"}},
        {"bos-twice", {"I see BOS twice in my inputs", "duplicated begin of sequence token",
                       "tokenizer and chat template both add bos"}},
        {"scheduler-per-microbatch", {"learning rate warmup finishes early when accumulating",
                                      "lr decays much faster than configured", "scheduler steps per micro batch"}},
        {"grad-accum-not-divided", {"grad norm is k times bigger with accumulation", "micro-batch losses not divided",
                                    "accumulating gradients gives a different answer than a large batch"}},
        {"forgot-zero-grad", {"grad norm grows every step", "forgot to call zero_grad",
                              "gradients accumulate across steps forever"}},
        {"causal-leak", {"suspiciously low training loss but generations are garbage", "model can see future tokens",
                         "causal mask looks ahead by one"}},
        {"view-vs-permute", {"examples in a batch influence each other", "used reshape where transpose was needed for heads",
                             "output depends on the other sequences in the batch"}},
        {"attn-logit-growth", {"attention logits explode", "softmax becomes one-hot during training",
                               "loss spikes at high learning rate without qk norm"}},
        {"fp16-overflow", {"NaN loss with fp16", "inf activations in half precision", "values above 65504 overflow"}},
        {"bos-missing", {"bos token is missing from my training data", "first token is im_start, no begin of sequence",
                         "chat template and tokenizer each assume the other one adds bos"}},
        {"mask-includes-prompt", {"model generates the user turn instead of answering",
                                  "prompt tokens are not masked out of the loss",
                                  "the instruction part is trained on as well, not masked"}},
        {"split-leak", {"my eval set leaked into train", "val and train splits share examples",
                        "validation score looks great but it is memorised"}},
        {"double-softmax", {"training loss plateaus at the log of the vocab size",
                            "softmax in the model and then cross entropy on top",
                            "model outputs probabilities and the loss expects logits"}},
        {"kv-cache-mismatch", {"use_cache gives different outputs than no cache",
                               "rotary positions restart at zero during incremental decoding",
                               "incremental decoding disagrees with the full sequence forward pass"}},
        {"bad-init-scale", {"loss right after initialization is far too high", "weights initialized with std 1",
                            "the very first training loss is enormous"}},
        {"weight-decay-on-norms", {"layer norm gains slowly go down to zero", "AdamW decays the norm weights too",
                                   "no_decay group missing for biases and LayerNorm"}},
        {"dead-layer", {"last transformer block is never updated",
                        "parameters have gradients but the weights never move",
                        "forgot to pass some parameters to the optimizer"}},
        {"bf16-master-weights", {"training in pure bfloat16 stops improving", "tiny updates get rounded off in bf16",
                                 "need an fp32 master copy of the weights"}},
        {"ga-token-mean", {"accumulating over sequences of different lengths gives a different gradient",
                           "mean of per-microbatch means is not the token mean",
                           "short micro-batches count too much under gradient accumulation"}},
        {"nonfinite-step-not-skipped", {"one infinite gradient poisoned all the parameters",
                                        "clip_grad_norm returns inf and the optimizer still steps",
                                        "Adam moments become NaN and stay NaN"}},
        {"resume-state-loss", {"training gets worse right after I restart from a saved checkpoint",
                               "only the model state_dict is saved, not the optimizer's",
                               "continuing from a checkpoint is not identical to training straight through"}},
        {"loss-spike-bad-data", {"occasional spikes in the training loss curve", "random junk samples in my dataset",
                                 "loss jumps on certain batches then recovers"}},
        {"no-warmup", {"no learning rate warmup and the run explodes early",
                       "the loss shoots up early on at the full learning rate", "peak lr from step one diverges"}},
        {"template-mismatch", {"generations drift although the training loss is fine",
                               "sampling without add_generation_prompt=True",
                               "chat format at inference does not match the fine-tuning format"}},
        {"seed-variance", {"my change helped in one run but not when I reran it",
                           "A vs B comparison with a single seed each",
                           "result not statistically significant across seeds"}},
        {"fp16-no-loss-scale", {"fp16 training without loss scaling", "small gradients flush to zero in half precision",
                                "forgot the grad scaler with float16 amp"}},
        {"pad-is-eos-masked", {"my fine-tuned model never stops talking",
                               "I used the eos token as the padding token and masked pad labels",
                               "generation always runs until the max length, no end of sequence"}},
        {"tied-head-desync", {"the model is worse after I reload it from disk",
                              "lm_head weights ignored because the config says tied embeddings",
                              "untied output layer dropped when loading the checkpoint"}},
        {"shortcut-confound", {"a spurious cue in the data stands in for the real task",
                               "accuracy collapses when the marker no longer agrees with the answer",
                               "shortcut learning: great validation accuracy from a confounded dataset"}},
        {"left-pad-positions", {"my request gets a different completion when batched with others",
                                "position ids start at the padding instead of the first token",
                                "pads are attended during batched decoding"}},
        {"bos-alignment-fake-gain", {"val loss dropped when we switched to BOS-aligned rows",
                                     "the two runs were evaluated on different numbers of tokens",
                                     "a lower eval loss that comes from dropping long examples"}},
        {"probe-value-loss", {"critic learns the wrong value target", "value regression onto advantages",
                              "V is wrong on the one step reward 1 probe"}},
        {"probe-backprop", {"value network ignores observations", "critic gives the same value for every input",
                            "critic cannot see the observation"}},
        {"discount-across-reset", {"GAE ignores done flags", "discounting crosses episode boundaries",
                                   "value before reset too high"}},
        {"advantage-sign", {"agent confidently picks the worst action", "advantage sign is flipped",
                            "policy gradient goes the wrong direction"}},
        {"stale-experience", {"observation and action are misaligned in the buffer",
                              "policy does not condition on observations",
                              "storing next observation with the current action"}},
        {"reward-mean-shift", {"normalising rewards makes CartPole worse", "reward normalization subtracts a mean",
                               "episodes shorter after reward normalisation"}},
        {"truncation-as-termination", {"time limits treated as terminal states", "no bootstrapping on truncation",
                                       "value too small when episodes are cut by a time limit"}},
        {"grpo-zero-signal", {"uniform reward groups get nonzero advantage", "GRPO advantages are rounding noise",
                              "groups where all rewards are equal still push samples"}},
        {"negative-kl", {"KL divergence goes negative", "policy moves away from the reference with a KL penalty",
                         "log ratio reversed in the KL"}},
        {"ratio-always-one", {"my clip fraction is always 0", "ratio is exactly one in every PPO epoch",
                              "old logprobs are just logp.detach()"}},
        {"sampler-logprob-mismatch", {"vLLM logprobs don't match the trainer's",
                                      "temperature not applied when the trainer recomputes logprobs",
                                      "ratio already off before the first optimizer step"}},
        {"std-cancellation", {"advantages are huge when rewards are nearly identical",
                              "variance as mean of squares minus square of mean in float32",
                              "advantage exceeds what the group rewards allow"}},
        {"grpo-length-bias", {"incorrect responses keep getting longer in GRPO",
                              "each sequence loss divided by its own length",
                              "long completions get less gradient per token"}},
        {"nan-reward-poisons-batch", {"one reward is NaN and the advantages become NaN",
                                      "every step skipped with nan grad norm but the run completes",
                                      "my reward function returns nan on unparsable answers"}},
        {"clip-per-rank", {"my GPUs hold different weights after a while",
                           "the clip uses each rank's local gradient norm before the allreduce",
                           "model replicas diverge in data parallel training"}},
        {"grads-not-averaged", {"grad norm is twice as large on 2 GPUs as on one",
                                "allreduce sum without dividing by the world size",
                                "effective learning rate grows with the number of GPUs"}},
        {"data-not-sharded", {"all GPUs see the same data",
                              "forgot the DistributedSampler",
                              "more GPUs but no faster learning per step"}},
        {"init-not-broadcast", {"each rank initializes the model with a different seed",
                                "parameters not broadcast from rank 0 at start",
                                "replicas differ before the first step"}},
    };
    ASSERT_EQ(queries.size(), failure_catalog().size()) << "every catalog entry needs its three queries";
    int missed = 0;
    for (const auto& [id, phrasings] : queries) {
        for (const std::string& q : phrasings) {
            const std::vector<FailureMatch> ranked = match_failures(q, kReadme);
            ASSERT_FALSE(ranked.empty());
            if (ranked.front().id != id || ranked.front().score <= 0.0) {
                ++missed;
                ADD_FAILURE() << "\"" << q << "\" found " << ranked.front().id << " (" << ranked.front().score
                              << "), expected " << id;
            }
        }
    }
    EXPECT_EQ(missed, 0);
}

TEST(FailureMatch, UnrelatedTextMatchesNothingAndABadTableIsAnError) {
    const std::vector<FailureMatch> ranked = match_failures("purple elephants dancing", kReadme);
    EXPECT_EQ(ranked.front().score, 0.0);
    const std::string dir = testing::scratch_dir("failure_match").string();
    testing::expect_error([&] { match_failures("loss", dir + "/absent.md"); }, {"absent.md", "cannot open"});
}

}  // namespace
}  // namespace reftrain
