import numpy as np, csv, sys
sys.path.insert(0, "/work/main")
from keraslm.calibration import cross_fitted_expected_error, calibration_quality, spearman, _score_numpy, fit_calibration, expected_error_mm
R = "/work/runs13"
d = np.load(f"{R}/shape/a_f01_eval.npz"); ids = list(d["ids"]); P, G, err, conf, spread = d["P"], d["G"], d["err"], d["conf"], d["spread"]
rows = list(csv.reader(open("/work/shared/data/isbi2015-train/landmarks.csv")))[1:]
gt = {r[0].split("/")[-1].split(".")[0]: np.array(r[1:], float).reshape(-1, 2) * 0.1 for r in rows}
print("GT frame check (mm diff to csv*0.1):", np.abs(G[0] - gt[ids[0]]).max())
f0 = set(list(csv.reader(open(f"{R}/a_eval_f0/predictions.csv")))[i][0] for i in range(30))
fold = np.array([0 if i in f0 else 1 for i in ids]); L = P.shape[1]
names = [str(i) for i in range(L)]
def feats(X, i):
    o = np.delete(X, i, axis=1); c = o.mean(1, keepdims=True)
    return np.c_[(o - c).reshape(len(X), -1), np.ones(len(X))], c[:, 0]
def fit_shape(T, lam):
    Ws, scales = [], []
    for i in range(L):
        A, c = feats(T, i); y = T[:, i] - c
        W = np.linalg.solve(A.T @ A + lam * np.eye(A.shape[1]), A.T @ y)
        # leave-one-out residual scale (hat matrix)
        H = A @ np.linalg.solve(A.T @ A + lam * np.eye(A.shape[1]), A.T)
        loo = (y - A @ W) / (1 - np.diag(H))[:, None]
        Ws.append(W); scales.append(np.sqrt((loo ** 2).sum(1).mean()))
    return Ws, np.array(scales)
def shape_pred(X, Ws):
    out = np.zeros_like(X)
    for i in range(L):
        A, c = feats(X, i); out[:, i] = A @ Ws[i] + c
    return out
for lam in (1, 10, 100):
    res = np.zeros_like(err); sp = np.zeros_like(P); scale = np.zeros_like(err)
    for f in (0, 1):
        test = fold == f
        T = np.stack([gt[k] for k in gt if k not in set(np.array(ids)[test])])
        Ws, s = fit_shape(T, lam); sp[test] = shape_pred(P[test], Ws); scale[test] = s
    res = np.linalg.norm(P - sp, axis=-1); rn = res / scale
    big = err > 4
    print(f"lam {lam}: scales {np.round(scale[0],1)}")
    print(f"  spearman res {spearman(res.ravel(), err.ravel()):.3f} normalized {spearman(rn.ravel(), err.ravel()):.3f}")
    for tau in (2.5, 3, 4):
        fix = rn > tau; Pc = np.where(fix[..., None], sp, P); e2 = np.linalg.norm(Pc - G, axis=-1)
        print(f"  replace where r/s > {tau}: {fix.sum()} points, MRE {err.mean():.3f} -> {e2.mean():.3f}, >10mm {(err>10).sum()} -> {(e2>10).sum()}")
    base = _score_numpy(conf, spread)
    ref = cross_fitted_expected_error(conf, spread, err, names)
    q = calibration_quality(ref, err); print("  heatmap-only cross-fitted:", {k: q[k] for k in q if k in ("spearman", "flagged_fraction", "caught_fraction")})
    for beta in (0.5, 1, 2):
        for c in (0.5, 1):
            s2 = base - beta * np.log(rn + c)
            # feed combined score via confidence=exp(s2), spread=0 -> score = s2 - log(0.1) (monotone)
            e = cross_fitted_expected_error(np.exp(s2), np.zeros_like(s2), err, names)
            q = calibration_quality(e, err)
            print(f"  beta {beta} c {c}: " + ", ".join(f"{k} {q[k]:.3f}" for k in ("spearman", "flagged_fraction", "caught_fraction")))
print("--- rank-based: catch of >4 mm errors among the worst 15 % by each score")
lam = 10
sp = np.zeros_like(P); scale = np.zeros_like(err)
for f in (0, 1):
    test = fold == f
    T = np.stack([gt[k] for k in gt if k not in set(np.array(ids)[test])])
    Ws, s = fit_shape(T, lam); sp[test] = shape_pred(P[test], Ws); scale[test] = s
res = np.linalg.norm(P - sp, axis=-1); rn = res / scale; big = err > 4
ref = cross_fitted_expected_error(conf, spread, err, names)
def catch(s): flag = s > np.quantile(s, 0.85); return (flag & big).sum() / big.sum()
print("heatmap expected", catch(ref), "shape res", catch(res), "shape res norm", catch(rn))
for a in (0.1, 0.2, 0.3, 0.5):
    comb = np.log(ref) + a * np.log(res + 0.5)
    print(f"log(ref) + {a} log(res+.5): catch {catch(comb):.3f} spearman {spearman(comb.ravel(), err.ravel()):.3f}")
    comb = np.argsort(np.argsort(ref.ravel())) + a * 3 * np.argsort(np.argsort(res.ravel()))
    print(f"   rank sum: catch {catch(comb.reshape(err.shape)):.3f} spearman {spearman(comb, err.ravel()):.3f}")
