// The Python module ge_detectron._C. It has no functions: importing it loads this library, whose
// static initialisers register the torch.ops.ge_detectron operators with the dispatcher.
#include <Python.h>

PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "Registers the torch.ops.ge_detectron operators.", -1,
                               nullptr};
  return PyModule_Create(&module);
}
