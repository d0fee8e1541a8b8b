// Writing result files safely: the output appears whole or not at all, an existing file is replaced only when
// asked, and an output never overwrites one of the command's inputs.
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace vitq {

// Writes `bytes` to `path` through a temporary file in the same folder, flushed and renamed into place: a
// crash or a full disk leaves either the old file (or none) or the complete new one, never a partial file.
// Error (one line, naming the path) when the folder is missing or unwritable, when `path` exists and
// `overwrite` is false, when `path` is a directory, or when the write fails.
void write_file_atomic(const std::string& path, std::string_view bytes, bool overwrite);

// Error when `output` is the same file as one of `inputs` (same path after resolving links, or same inode).
void check_not_an_input(const std::string& output, const std::vector<std::string>& inputs, const std::string& what);

}  // namespace vitq
