/* Runs a SavedModel signature through TensorFlow's C API, as TF Serving loads it.
 *
 * TF_LoadSessionFromSavedModel imports the MetaGraph tagged TAG into a TF1 session and
 * runs its saver's restore op; TF_SessionRun then feeds int32 ids to the input tensors
 * and fetches one float32 output tensor. The tensor names ("op:index") are the ones
 * the signature maps its keys to (SignatureDef.inputs[key].name).
 *
 * Usage: c_api_predict EXPORT_DIR TAG OUTPUT_TENSOR (INPUT_TENSOR ROWS COLS)... < ids
 *   ids: for each input in turn, ROWS * COLS int32 values as text, row-major,
 *   separated by white space.
 * Prints "shape d0 d1 ..." and then the output values, one per line, with 9
 * significant digits (enough to round-trip a float32). Exits non-zero on any error,
 * with the TensorFlow status message on stderr.
 *
 * Build against the tensorflow wheel, e.g.
 *   gcc c_api_predict.c -I$TF/include -L$TF -l:libtensorflow_cc.so.2 \
 *       -l:libtensorflow_framework.so.2 -Wl,-rpath,$TF -o c_api_predict
 * with TF=$(python -c "import tensorflow as tf; print(tf.sysconfig.get_lib())").
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tensorflow/c/c_api.h"

static int fail(const char *what, TF_Status *status) {
  fprintf(stderr, "c_api_predict: %s: %s\n", what,
          status ? TF_Message(status) : "invalid argument");
  return 1;
}

/* Splits "op:index" into the graph operation and output index. */
static int find_output(TF_Graph *graph, const char *name, TF_Output *output) {
  char op_name[1024];
  const char *colon = strrchr(name, ':');
  size_t length = colon ? (size_t)(colon - name) : strlen(name);
  if (length == 0 || length >= sizeof(op_name)) return 0;
  memcpy(op_name, name, length);
  op_name[length] = '\0';
  output->oper = TF_GraphOperationByName(graph, op_name);
  output->index = colon ? atoi(colon + 1) : 0;
  return output->oper != NULL && output->index >= 0 &&
         output->index < TF_OperationNumOutputs(output->oper);
}

#define MAX_INPUTS 16

int main(int argc, char **argv) {
  int num_inputs = (argc - 4) / 3;
  if (argc < 7 || (argc - 4) % 3 != 0 || num_inputs > MAX_INPUTS) {
    fprintf(stderr,
            "usage: %s EXPORT_DIR TAG OUTPUT_TENSOR (INPUT_TENSOR ROWS COLS)... < ids\n"
            "  (1 to %d inputs)\n",
            argv[0], MAX_INPUTS);
    return 2;
  }
  const char *export_dir = argv[1];
  const char *tags[] = {argv[2]};

  TF_Status *status = TF_NewStatus();
  TF_Graph *graph = TF_NewGraph();
  TF_SessionOptions *options = TF_NewSessionOptions();
  TF_Session *session = TF_LoadSessionFromSavedModel(options, NULL, export_dir, tags, 1,
                                                     graph, NULL, status);
  TF_DeleteSessionOptions(options);
  if (TF_GetCode(status) != TF_OK) return fail("TF_LoadSessionFromSavedModel", status);

  TF_Output output;
  if (!find_output(graph, argv[3], &output)) {
    fprintf(stderr, "c_api_predict: no tensor %s in the graph\n", argv[3]);
    return 1;
  }
  TF_Output inputs[MAX_INPUTS];
  TF_Tensor *feeds[MAX_INPUTS];
  for (int k = 0; k < num_inputs; ++k) {
    const char *name = argv[4 + 3 * k];
    long rows = strtol(argv[5 + 3 * k], NULL, 10), cols = strtol(argv[6 + 3 * k], NULL, 10);
    if (rows <= 0 || cols <= 0) {
      fprintf(stderr, "c_api_predict: ROWS and COLS of %s must be positive, got %s %s\n",
              name, argv[5 + 3 * k], argv[6 + 3 * k]);
      return 2;
    }
    if (!find_output(graph, name, &inputs[k])) {
      fprintf(stderr, "c_api_predict: no tensor %s in the graph\n", name);
      return 1;
    }
    if (TF_OperationOutputType(inputs[k]) != TF_INT32) {
      fprintf(stderr, "c_api_predict: input %s is of type %d, expected TF_INT32 (%d)\n",
              name, (int)TF_OperationOutputType(inputs[k]), (int)TF_INT32);
      return 1;
    }
    const int64_t dims[2] = {rows, cols};
    feeds[k] = TF_AllocateTensor(TF_INT32, dims, 2, sizeof(int32_t) * rows * cols);
    int32_t *values = (int32_t *)TF_TensorData(feeds[k]);
    for (long i = 0; i < rows * cols; ++i) {
      if (scanf("%d", &values[i]) != 1) {
        fprintf(stderr, "c_api_predict: stdin holds fewer ids than input %s needs (%ld)\n",
                name, rows * cols);
        return 1;
      }
    }
  }

  TF_Tensor *result = NULL;
  TF_SessionRun(session, NULL, inputs, feeds, num_inputs, &output, &result, 1, NULL, 0,
                NULL, status);
  for (int k = 0; k < num_inputs; ++k) TF_DeleteTensor(feeds[k]);
  if (TF_GetCode(status) != TF_OK) return fail("TF_SessionRun", status);
  if (TF_TensorType(result) != TF_FLOAT) {
    fprintf(stderr, "c_api_predict: output %s is of type %d, expected TF_FLOAT (%d)\n",
            argv[3], (int)TF_TensorType(result), (int)TF_FLOAT);
    return 1;
  }

  printf("shape");
  for (int d = 0; d < TF_NumDims(result); ++d) printf(" %lld", (long long)TF_Dim(result, d));
  printf("\n");
  const float *out = (const float *)TF_TensorData(result);
  for (int64_t i = 0; i < TF_TensorElementCount(result); ++i) printf("%.9g\n", out[i]);
  TF_DeleteTensor(result);

  TF_CloseSession(session, status);
  TF_DeleteSession(session, status);
  TF_DeleteGraph(graph);
  TF_DeleteStatus(status);
  return 0;
}
