// The constants of rnnkit's float32 exp / tanh (act512.h on 16 lanes, act256.h on 8): one
// source for both widths. Polynomials fitted by weighted least squares towards minimax in
// float64, then rounded to float (the fit: docs/fused.md, "float32 activations inlined").
#pragma once

namespace rnnkit_act {

constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693145751953125f;      // ln 2 to 16 bits: n kLn2Hi is exact for |n| < 256
constexpr float kLn2Lo = 1.428606765330187e-06f;  // ln 2 - kLn2Hi
// e^r = 1 + r + r² P(r) on |r| <= ln 2 / 2: P's coefficients, highest degree first
constexpr float kExpP[6] = {1.9790352962445468e-04f, 1.3944648671895266e-03f, 8.333496749401093e-03f,
                            4.166629537940025e-02f,  1.666666567325592e-01f,  0.5f};
// tanh x = x + x³ R(x²) on |x| < kTanhSmall: R's coefficients, highest degree first
constexpr float kTanhR[5] = {-5.704985465854406e-03f, 2.063908614218235e-02f, -5.373971536755562e-02f,
                             1.3331441581249237e-01f, -3.333328068256378e-01f};
constexpr float kTanhSmall = 0.625f;
// σ(x) = 0 at and below this, as ATen's float32 1 / (1 + e^-x): e^-x overflows for x < -ln(FLT_MAX)
// (-88.722839055...), and this is the largest float below it
constexpr float kSigmoidZero = -88.72283935546875f;

}  // namespace rnnkit_act
