// train/config_fields.h — one line per config key: its dotted JSON path and where the value lives.
//
// Every config (run, PPO, GRPO) is a struct with defaults plus a table of its keys. The table makes
// both directions, so a key is written once:
//   write(Config{})  the default JSON: `--print-defaults`, and the schema the strict merge checks files
//                    and --set lines against (unknown key, wrong type: train/run_config.cpp);
//   read(json)       the typed struct, after the merge. A value the merge let through that the struct
//                    cannot hold (a negative seed) fails naming the source and the key.
// A key's own range goes on its line (.positive(), .non_negative(), .between(a, b), .one_of({...}));
// rules that tie keys together (num_minibatches divides the batch) stay with each config.
//
//   ConfigFields<GrpoConfig> f;
//   f.add("seed", &GrpoConfig::seed)
//    .add("optimizer.lr", &GrpoConfig::adamw, &AdamWConfig::lr);   // a member of a member
#pragma once

#include <algorithm>
#include <functional>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/error.h"

namespace reftrain {

template <class Config>
class ConfigFields {
public:
    // `path` is dotted ("train.seq_len"); `members` lead from Config to the slot (c.*m1.*m2...).
    template <class... Members>
    ConfigFields& add(std::string path, Members... members) {
        using Slot = std::remove_cvref_t<decltype(slot(std::declval<Config&>(), members...))>;
        Field field;
        field.path = std::move(path);
        field.pointer = nlohmann::json::json_pointer(pointer_of(field.path));
        field.write = [members...](const Config& c) {
            return nlohmann::json(slot(c, members...));
        };
        field.read = [members...](const nlohmann::json& value, Config& c, const std::string& where) {
            if constexpr (std::is_unsigned_v<Slot> && !std::is_same_v<Slot, bool>) {
                check(value.is_number_unsigned(), where, " must be an integer >= 0, got ", value.dump());
            }
            try {
                slot(c, members...) = value.template get<Slot>();
            } catch (const nlohmann::json::exception&) {
                fail(where, " has the wrong type: got ", value.dump());
            }
        };
        fields_.push_back(std::move(field));
        return *this;
    }

    // Rules on the key added last; each failure names the source, the key, the rule and the value.
    ConfigFields& positive() {
        return rule("must be > 0", [](const nlohmann::json& v) { return v.template get<double>() > 0; });
    }
    ConfigFields& non_negative() {
        return rule("must be >= 0", [](const nlohmann::json& v) { return v.template get<double>() >= 0; });
    }
    ConfigFields& between(double low, double high) {
        std::ostringstream expected;
        expected << "must be in [" << low << ", " << high << "]";
        return rule(expected.str(), [low, high](const nlohmann::json& v) {
            const double x = v.template get<double>();
            return x >= low && x <= high;
        });
    }
    ConfigFields& one_of(std::vector<std::string> choices) {
        std::string expected;
        for (size_t i = 0; i < choices.size(); ++i) expected += (i ? ", \"" : "\"") + choices[i] + "\"";
        return rule("must be one of " + expected, [choices](const nlohmann::json& v) {
            return std::find(choices.begin(), choices.end(), v.template get<std::string>()) != choices.end();
        });
    }

    nlohmann::json write(const Config& c) const {
        nlohmann::json j = nlohmann::json::object();
        for (const Field& f : fields_) j[f.pointer] = f.write(c);
        return j;
    }

    // Every key of the table must be present in `j` (the merge starts from write(Config{}), so it is).
    void read(const nlohmann::json& j, Config& c, const std::string& source) const {
        for (const Field& f : fields_) {
            const std::string where = source + ": '" + f.path + "'";
            check(j.contains(f.pointer), where, " is missing");
            const nlohmann::json& value = j.at(f.pointer);
            f.read(value, c, where);
            for (const Rule& r : f.rules) check(r.holds(value), where, " ", r.expectation, ", got ", value.dump());
        }
    }

private:
    struct Rule {
        std::string expectation;
        std::function<bool(const nlohmann::json&)> holds;
    };
    struct Field {
        std::string path;
        std::vector<Rule> rules;
        nlohmann::json::json_pointer pointer;
        std::function<nlohmann::json(const Config&)> write;
        std::function<void(const nlohmann::json&, Config&, const std::string&)> read;
    };
    std::vector<Field> fields_;

    ConfigFields& rule(std::string expectation, std::function<bool(const nlohmann::json&)> holds) {
        check(!fields_.empty(), "ConfigFields: a rule must follow the key it applies to");
        fields_.back().rules.push_back({std::move(expectation), std::move(holds)});
        return *this;
    }

    template <class Object, class First, class... Rest>
    static auto& slot(Object& object, First first, Rest... rest) {
        if constexpr (sizeof...(rest) == 0) {
            return object.*first;
        } else {
            return slot(object.*first, rest...);
        }
    }
    static std::string pointer_of(const std::string& dotted) {
        std::string pointer = "/" + dotted;
        for (char& ch : pointer) if (ch == '.') ch = '/';
        return pointer;
    }
};

// The `bugs` object of any config: {"name": true|false}, each name a switch of kernels/bugs.h (written
// with '-' or '_'); an unknown name fails with the closest known one.
void check_bug_switches(const nlohmann::json& bugs, const std::string& source);

}  // namespace reftrain
