// Writing result files safely: the output appears whole or not at all, an existing file is replaced only when
// asked, and an output never overwrites one of the command's inputs.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace vitq {

// Writes `bytes` to `path` through a temporary file in the same folder, flushed and renamed into place: a
// crash or a full disk leaves either the old file (or none) or the complete new one, never a partial file.
// Error (one line, naming the path) when the folder is missing or unwritable, when `path` exists and
// `overwrite` is false, when `path` is a directory, or when the write fails.
void write_file_atomic(const std::string& path, std::string_view bytes, bool overwrite);

// The whole content of the regular file `path` (`what` names it in errors: "image", "plan", ...). Refuses
// FIFOs, devices, sockets and folders before opening them (opening a FIFO blocks until a writer comes), files
// larger than `max_bytes`, and a file that changes size while it is read.
std::string read_file(const std::string& path, const std::string& what, uint64_t max_bytes);

// Error unless `path` is an existing regular file (or a link to one). Does not open it.
void check_regular_file(const std::string& path, const std::string& what);

// Checks an output path before any work is done, so that a command fails at once and not after an hour of
// search: the output is none of `inputs`, not a folder, its folder exists and is writable, and an existing
// target is a regular file (replaced atomically) or a character device such as /dev/null (written in place).
void check_output_path(const std::string& output, const std::vector<std::string>& inputs, const std::string& what);

// Creates the folder `dir` (and its parents) for results, or fails naming it when that is impossible or the
// folder is not writable.
void make_output_dir(const std::string& dir, const std::string& what);

// Error when `output` is the same file as one of `inputs` (same path after resolving links, or same inode).
void check_not_an_input(const std::string& output, const std::vector<std::string>& inputs, const std::string& what);

}  // namespace vitq
