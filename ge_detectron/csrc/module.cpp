// The Python module ge_detectron._C. It has no functions: importing it loads this library, whose
// static initialisers register the CPU kernels' operators torch.ops.ge_detectron_cpu.* with the dispatcher.
#include <Python.h>

PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "Registers the CPU kernels torch.ops.ge_detectron_cpu.*.", -1,
                               nullptr};
  return PyModule_Create(&module);
}
