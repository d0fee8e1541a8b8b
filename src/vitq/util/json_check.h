// Checks on JSON read from files, before any field is converted: nlohmann's get<int>() of a float is a plain
// static_cast, undefined behaviour when the value does not fit (a config's "img_size": 1e30).
#pragma once
#include <nlohmann/json_fwd.hpp>
#include <string>

namespace vitq {

// Error naming `where` and the field's JSON path when any number in `j` is not finite or a float of magnitude
// above `max_abs` (no real config or header field comes near 1e9; every integer field fits in int32 below it).
void check_json_numbers(const nlohmann::json& j, double max_abs, const std::string& where);

}  // namespace vitq
