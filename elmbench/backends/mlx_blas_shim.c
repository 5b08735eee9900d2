/* The three BLAS functions MLX's CPU backend calls (cblas_sgemm, cblas_dgemm, cblas_cgemm),
 * forwarded to OpenBLAS from the scipy-openblas32 wheel, whose symbols carry a `scipy_` prefix.
 * Loaded first (LD_PRELOAD), these are found before the reference BLAS that the Linux mlx-cpu
 * wheel bundles. Built and cached by elmbench.backends.mlx_blas. */

void scipy_cblas_sgemm(int, int, int, int, int, int, float, const float *, int, const float *,
                       int, float, float *, int);
void scipy_cblas_dgemm(int, int, int, int, int, int, double, const double *, int,
                       const double *, int, double, double *, int);
void scipy_cblas_cgemm(int, int, int, int, int, int, const void *, const void *, int,
                       const void *, int, const void *, void *, int);
char *scipy_openblas_get_config(void);

void cblas_sgemm(int order, int ta, int tb, int m, int n, int k, float alpha, const float *a,
                 int lda, const float *b, int ldb, float beta, float *c, int ldc) {
  scipy_cblas_sgemm(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void cblas_dgemm(int order, int ta, int tb, int m, int n, int k, double alpha, const double *a,
                 int lda, const double *b, int ldb, double beta, double *c, int ldc) {
  scipy_cblas_dgemm(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void cblas_cgemm(int order, int ta, int tb, int m, int n, int k, const void *alpha,
                 const void *a, int lda, const void *b, int ldb, const void *beta, void *c,
                 int ldc) {
  scipy_cblas_cgemm(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

/* What the records name: "OpenBLAS 0.3.x ..." */
const char *elm_blas_config(void) { return scipy_openblas_get_config(); }
