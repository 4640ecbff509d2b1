"""Model and training shapes that the benchmark and the profiler measure (no flags here)."""

CONFIGS = {
    # name: (loss, h, B, S, extra training parameters)
    "rsc15_xe": ("cross-entropy", 100, 32, 2048, dict(dropout_p_hidden=0.4, learning_rate=0.2, momentum=0.2,
                                                      sample_alpha=0.5, logq=1.0)),
    "retailrocket_bprmax": ("bpr-max", 224, 80, 2048, dict(dropout_p_embed=0.5, dropout_p_hidden=0.05,
                                                           learning_rate=0.05, momentum=0.4, sample_alpha=0.4,
                                                           bpreg=1.95, elu_param=0.5)),
    "large_xe": ("cross-entropy", 512, 128, 2048, dict(dropout_p_hidden=0.2, learning_rate=0.05, sample_alpha=0.5,
                                                       logq=1.0)),
}
