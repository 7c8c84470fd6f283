// probes/failure_match.h — find a catalog entry from a symptom described in a user's own words.
//
// The phrases live in one place, the table "Find an entry by its symptom" of docs/failures/README.md
// (`| symptom | [id](id.md) |` rows); each entry's title, symptom and bug text from the catalog are
// added to its phrases. A query scores against an entry by the words they share, each word weighted
// by how rare it is across entries (idf), after lower-casing, dropping common words and a light
// stemming (plural and -ing/-ed endings). `reftrain failure match TEXT` prints the ranking.
#pragma once

#include <string>
#include <vector>

namespace reftrain {

struct FailureMatch {
    std::string id;
    double score = 0.0;        // 0: no word in common
    std::string best_phrase;   // the entry's phrase that shares the most weight with the query
};

// Reads the symptom table from `readme` (docs/failures/README.md); fails naming the file when it has
// no such table or a row names an id the catalog does not have.
std::vector<FailureMatch> match_failures(const std::string& query, const std::string& readme);

}  // namespace reftrain
