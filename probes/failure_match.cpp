// probes/failure_match.cpp — see failure_match.h.
#include "probes/failure_match.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <map>
#include <set>

#include "kernels/error.h"
#include "probes/failures.h"

namespace reftrain {

namespace {

const std::set<std::string>& stopwords() {
    static const std::set<std::string> words = {
        "a", "an", "the", "is", "are", "was", "were", "be", "been", "of", "to", "in", "on", "at", "by", "for",
        "with", "and", "or", "but", "not", "no", "it", "its", "this", "that", "my", "our", "your", "as", "from",
        "after", "before", "every", "each", "than", "then", "so", "too", "very", "does", "do", "did", "has",
        "have", "had", "i", "we", "you", "when", "while", "which", "what", "why", "how", "into", "instead",
        "gets", "get", "got", "keeps", "all", "same", "only", "still"};
    return words;
}

std::string stem(std::string w) {
    auto strip = [&](const char* suffix, size_t min_left) {
        const std::string s(suffix);
        if (w.size() > s.size() + min_left && w.compare(w.size() - s.size(), s.size(), s) == 0) {
            w.resize(w.size() - s.size());
            return true;
        }
        return false;
    };
    strip("ing", 3) || strip("ed", 3) || strip("es", 3) || strip("s", 3);
    return w;
}

// The same word as people abbreviate it.
std::string canonical(const std::string& w) {
    static const std::map<std::string, std::string> same = {
        {"grad", "gradient"}, {"grads", "gradient"}, {"lr", "learning"}, {"normalization", "normalisation"},
        {"normalizing", "normalising"}, {"normalize", "normalise"}, {"nans", "nan"}, {"infs", "inf"}};
    auto found = same.find(w);
    return found == same.end() ? w : found->second;
}

std::vector<std::string> words_of(const std::string& text) {
    std::vector<std::string> out;
    std::string w;
    auto flush = [&] {
        if (!w.empty() && !stopwords().count(w)) out.push_back(stem(canonical(w)));
        w.clear();
    };
    for (char c : text) {
        if (std::isalnum(static_cast<unsigned char>(c)) || c == '_') {
            w += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        } else {
            flush();
        }
    }
    flush();
    return out;
}

}  // namespace

std::vector<FailureMatch> match_failures(const std::string& query, const std::string& readme) {
    std::ifstream in(readme);
    check(static_cast<bool>(in), readme, ": cannot open the failure catalog's README (its symptom table is what "
                                 "`failure match` searches)");
    std::map<std::string, std::vector<std::string>> phrases;  // id -> phrases
    bool in_table = false;
    for (std::string line; std::getline(in, line);) {
        if (line.rfind("## ", 0) == 0) in_table = line.find("by its symptom") != std::string::npos;
        if (!in_table || line.rfind("| ", 0) != 0 || line.rfind("|---", 0) == 0) continue;
        const size_t open = line.find("| [", 2), close = line.find("](", open == std::string::npos ? 0 : open);
        if (open == std::string::npos || close == std::string::npos) continue;  // the header row
        const std::string phrase = line.substr(2, open - 2);
        const std::string id = line.substr(open + 3, close - open - 3);
        phrases[id].push_back(phrase.substr(0, phrase.find_last_not_of(' ') + 1));
    }
    check(!phrases.empty(), readme, ": no table under a heading '## Find an entry by its symptom'");
    std::set<std::string> known;
    for (const FailureScenario& s : failure_catalog()) known.insert(s.id);
    for (const auto& [id, list] : phrases) {
        check(known.count(id) != 0, readme, ": the symptom table names '", id, "', which is not in the catalog");
    }
    // Each entry's words: its phrases plus the catalog's title, symptom and bug.
    std::map<std::string, std::set<std::string>> entry_words;
    for (const FailureScenario& s : failure_catalog()) {
        std::vector<std::string> texts = phrases[s.id];
        texts.insert(texts.end(), {s.title, s.symptom, s.bug});
        for (const std::string& t : texts) {
            for (const std::string& w : words_of(t)) entry_words[s.id].insert(w);
        }
    }
    std::map<std::string, int> df;
    for (const auto& [id, ws] : entry_words) {
        for (const std::string& w : ws) ++df[w];
    }
    const double n = static_cast<double>(entry_words.size());
    auto idf = [&](const std::string& w) { return std::log(1.0 + n / std::max(1, df[w])); };
    const std::vector<std::string> query_words = words_of(query);
    std::vector<FailureMatch> out;
    for (const FailureScenario& s : failure_catalog()) {
        FailureMatch m{s.id, 0.0, ""};
        for (const std::string& w : std::set<std::string>(query_words.begin(), query_words.end())) {
            if (entry_words[s.id].count(w)) m.score += idf(w);
        }
        double best = 0.0;
        for (const std::string& p : phrases[s.id]) {
            double shared = 0.0;
            const std::vector<std::string> pw = words_of(p);
            for (const std::string& w : std::set<std::string>(query_words.begin(), query_words.end())) {
                if (std::find(pw.begin(), pw.end(), w) != pw.end()) shared += idf(w);
            }
            if (shared > best) {
                best = shared;
                m.best_phrase = p;
            }
        }
        out.push_back(m);
    }
    std::stable_sort(out.begin(), out.end(), [](const FailureMatch& a, const FailureMatch& b) { return a.score > b.score; });
    return out;
}

}  // namespace reftrain
