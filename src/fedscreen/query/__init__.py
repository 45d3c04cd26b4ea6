"""The DP query language: SQL subset, specs, the compiler, OpenDP mechanisms and costs."""
