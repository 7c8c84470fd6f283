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
