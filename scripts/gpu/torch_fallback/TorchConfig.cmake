# Fallback for scripts/gpu/check.sh: a pip PyTorch's libtorch described by hand, used only when its own
# TorchConfig.cmake does not configure (it looks for the CUDA toolkit's pieces, which a machine may lack).
# VITQ_TORCH_ROOT: the torch package folder (python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))').
set(_root "$ENV{VITQ_TORCH_ROOT}")
if(NOT EXISTS "${_root}/include/torch/torch.h")
  message(FATAL_ERROR "VITQ_TORCH_ROOT=${_root} is not a PyTorch package folder")
endif()
set(_libs)
foreach(_l torch torch_cuda torch_cpu c10_cuda c10)
  if(EXISTS "${_root}/lib/lib${_l}.so")
    list(APPEND _libs "${_root}/lib/lib${_l}.so")
  endif()
endforeach()
if(NOT TARGET torch)
  add_library(torch INTERFACE IMPORTED)
  set_target_properties(torch PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${_root}/include;${_root}/include/torch/csrc/api/include"
    INTERFACE_LINK_LIBRARIES "${_libs}"
    INTERFACE_COMPILE_OPTIONS "-D_GLIBCXX_USE_CXX11_ABI=1")
endif()
set(TORCH_LIBRARIES torch)
set(TORCH_INCLUDE_DIRS "${_root}/include;${_root}/include/torch/csrc/api/include")
set(Torch_FOUND TRUE)
