# Reference values for tests/test_survival.py, computed with R's survival package.
#
# Run from the repository root:
#     Rscript tests/r_reference/make_reference.R tests/r_reference
# (Debian: apt-get install r-base-core r-cran-survival r-cran-maxstat). The committed CSVs in this
# folder were produced by R 4.2.2 with survival 3.5-3 and maxstat 0.7-25; the R call behind every
# file is written in the file's first column `call` where it helps, and here below.
#
# Numbers are written with 17 significant digits so the tests can compare at relative 1e-6 or tighter.
suppressPackageStartupMessages(library(survival))
args <- commandArgs(trailingOnly = TRUE)
out <- if (length(args) >= 1) args[1] else "tests/r_reference"
dir.create(out, showWarnings = FALSE, recursive = TRUE)

num <- function(x) ifelse(is.na(x), "NA", sprintf("%.17g", x))
write_table <- function(df, name) {
  for (col in names(df)) if (is.numeric(df[[col]])) df[[col]] <- num(df[[col]])
  write.csv(df, file.path(out, name), row.names = FALSE, quote = TRUE)
}

# ---- the data, exactly as R has it (the Python tests read these CSVs) -----------------------------
write_table(lung, "lung.csv")                       # survival::lung, status 1 = censored, 2 = dead
vet <- veteran; vet$celltype <- as.character(vet$celltype)
write_table(vet, "veteran.csv")                     # survival::veteran, status 0/1

# ---- Kaplan-Meier with log-log intervals -------------------------------------------------------
km_table <- function(fit, dataset, group) {
  strata <- if (is.null(fit$strata)) rep("all", length(fit$time)) else
    rep(sub("^[^=]*=", "", names(fit$strata)), fit$strata)
  data.frame(dataset = dataset, group_col = group, stratum = strata, time = fit$time,
             n_risk = fit$n.risk, n_event = fit$n.event, n_censor = fit$n.censor,
             surv = fit$surv, std_err = fit$std.err, lower = fit$lower, upper = fit$upper)
}
med_table <- function(fit, dataset, group) {
  tab <- summary(fit)$table
  if (is.null(dim(tab))) tab <- t(as.matrix(tab))
  strata <- if (is.null(fit$strata)) "all" else sub("^[^=]*=", "", rownames(tab))
  data.frame(dataset = dataset, group_col = group, stratum = strata, n = tab[, "records"],
             events = tab[, "events"], median = tab[, "median"], lcl = tab[, "0.95LCL"],
             ucl = tab[, "0.95UCL"])
}
at_table <- function(fit, times, dataset, group) {
  s <- summary(fit, times = times, extend = TRUE)
  strata <- if (is.null(s$strata)) rep("all", length(s$time)) else sub("^[^=]*=", "", as.character(s$strata))
  data.frame(dataset = dataset, group_col = group, stratum = strata, time = s$time,
             surv = s$surv, lower = s$lower, upper = s$upper, n_risk = s$n.risk)
}

# call: survfit(Surv(time, status) ~ sex, data = lung, conf.type = "log-log")
f_lung <- survfit(Surv(time, status) ~ sex, data = lung, conf.type = "log-log")
# call: survfit(Surv(time, status) ~ 1, data = lung, conf.type = "log-log")
f_lung1 <- survfit(Surv(time, status) ~ 1, data = lung, conf.type = "log-log")
# call: survfit(Surv(time, status) ~ celltype, data = veteran, conf.type = "log-log")
f_vet <- survfit(Surv(time, status) ~ celltype, data = vet, conf.type = "log-log")
# call: survfit(Surv(time, status) ~ ph.ecog, data = lung, conf.type = "log-log")  (one NA row dropped)
f_ecog <- survfit(Surv(time, status) ~ ph.ecog, data = lung, conf.type = "log-log")

# Tiny curves for R's median rules: a curve flat at exactly 0.5 (median = midpoint of the flat stretch)
# and a curve that ends at exactly 0.5 (midpoint to the last follow-up time).
tiny <- data.frame(time = c(1, 2, 3, 4, 1, 2), status = c(1, 1, 0, 1, 1, 0), case = c(rep("flat", 4), rep("ends", 2)))
write_table(tiny, "tiny.csv")
# call: survfit(Surv(time, status) ~ case, data = tiny, conf.type = "log-log")
f_tiny <- survfit(Surv(time, status) ~ case, data = tiny, conf.type = "log-log")

write_table(rbind(km_table(f_tiny, "tiny", "case"), km_table(f_lung, "lung", "sex"), km_table(f_lung1, "lung", ""),
                  km_table(f_vet, "veteran", "celltype"), km_table(f_ecog, "lung", "ph.ecog")),
            "km.csv")
write_table(rbind(med_table(f_tiny, "tiny", "case"), med_table(f_lung, "lung", "sex"), med_table(f_lung1, "lung", ""),
                  med_table(f_vet, "veteran", "celltype"), med_table(f_ecog, "lung", "ph.ecog")),
            "km_median.csv")
# call: summary(fit, times = c(180, 365, 730), extend = TRUE)
write_table(rbind(at_table(f_lung, c(180, 365, 730), "lung", "sex"),
                  at_table(f_vet, c(30, 90, 180, 365), "veteran", "celltype")),
            "km_at_times.csv")

# ---- log-rank and G-rho tests --------------------------------------------------------------------
sd_row <- function(sd, dataset, group, rho) {
  df <- length(sd$n) - 1
  data.frame(dataset = dataset, group_col = group, rho = rho, chisq = sd$chisq, df = df,
             p = pchisq(sd$chisq, df, lower.tail = FALSE))
}
rows <- list()
for (rho in c(0, 1)) {
  # call: survdiff(Surv(time, status) ~ sex, data = lung, rho = rho)
  rows[[length(rows) + 1]] <- sd_row(survdiff(Surv(time, status) ~ sex, data = lung, rho = rho), "lung", "sex", rho)
  rows[[length(rows) + 1]] <- sd_row(survdiff(Surv(time, status) ~ ph.ecog, data = lung, rho = rho), "lung", "ph.ecog", rho)
  rows[[length(rows) + 1]] <- sd_row(survdiff(Surv(time, status) ~ celltype, data = vet, rho = rho), "veteran", "celltype", rho)
}
write_table(do.call(rbind, rows), "logrank.csv")

# pairwise log-rank on veteran celltype, Holm-adjusted with p.adjust(method = "holm")
lv <- sort(unique(vet$celltype)); pw <- list()
for (i in 1:(length(lv) - 1)) for (j in (i + 1):length(lv)) {
  sub <- vet[vet$celltype %in% c(lv[i], lv[j]), ]
  sd <- survdiff(Surv(time, status) ~ celltype, data = sub)
  pw[[length(pw) + 1]] <- data.frame(a = lv[i], b = lv[j], chisq = sd$chisq,
                                      p = pchisq(sd$chisq, 1, lower.tail = FALSE))
}
pw <- do.call(rbind, pw); pw$p_holm <- p.adjust(pw$p, method = "holm")
write_table(pw, "pairwise_veteran.csv")

# ---- Cox proportional hazards, Efron ties ---------------------------------------------------------
cox_rows <- function(fit, model) {
  s <- summary(fit)
  data.frame(model = model, term = rownames(s$coefficients), coef = s$coefficients[, "coef"],
             se = s$coefficients[, "se(coef)"], z = s$coefficients[, "z"], p = s$coefficients[, "Pr(>|z|)"],
             hr = s$conf.int[, "exp(coef)"], hr_lower = s$conf.int[, "lower .95"],
             hr_upper = s$conf.int[, "upper .95"])
}
cox_fit_rows <- function(fit, model) {
  data.frame(model = model, loglik = fit$loglik[2], concordance = fit$concordance[["concordance"]],
             concordance_se = fit$concordance[["std"]], concordant = fit$concordance[["concordant"]], discordant = fit$concordance[["discordant"]], tied_x = fit$concordance[["tied.x"]], n = fit$n, nevent = fit$nevent)
}
# call: coxph(Surv(time, status) ~ age + sex + ph.ecog, data = lung, ties = "efron")
c1 <- coxph(Surv(time, status) ~ age + sex + ph.ecog, data = lung, ties = "efron")
# call: coxph(Surv(time, status) ~ celltype, data = veteran, ties = "efron")  (reference level adeno)
c2 <- coxph(Surv(time, status) ~ celltype, data = vet, ties = "efron")
# call: coxph(Surv(time, status) ~ karno + age + trt + prior, data = veteran, ties = "efron")
c3 <- coxph(Surv(time, status) ~ karno + age + trt + prior, data = vet, ties = "efron")
# call: coxph(Surv(time, status) ~ sex, data = lung, ties = "efron")
c4 <- coxph(Surv(time, status) ~ sex, data = lung, ties = "efron")
write_table(rbind(cox_rows(c1, "lung_age_sex_ecog"), cox_rows(c2, "veteran_celltype"),
                  cox_rows(c3, "veteran_karno_age_trt_prior"), cox_rows(c4, "lung_sex")), "cox.csv")
write_table(rbind(cox_fit_rows(c1, "lung_age_sex_ecog"), cox_fit_rows(c2, "veteran_celltype"),
                  cox_fit_rows(c3, "veteran_karno_age_trt_prior"), cox_fit_rows(c4, "lung_sex")), "cox_fit.csv")

# call: cox.zph(fit, transform = "km", terms = FALSE)  (survival >= 3.0: score test, not correlation)
zph_rows <- function(fit, model) {
  z <- cox.zph(fit, transform = "km", terms = FALSE)
  data.frame(model = model, term = rownames(z$table), chisq = z$table[, "chisq"], df = z$table[, "df"],
             p = z$table[, "p"])
}
write_table(rbind(zph_rows(c1, "lung_age_sex_ecog"), zph_rows(c3, "veteran_karno_age_trt_prior")), "cox_zph.csv")

# ---- maximally selected log-rank statistic -----------------------------------------------------
if (requireNamespace("maxstat", quietly = TRUE)) {
  ms_rows <- list(); curve_rows <- list()
  for (v in c("age", "ph.karno", "wt.loss")) {
    d <- lung[!is.na(lung[[v]]), ]
    d$status01 <- d$status - 1
    # call: maxstat::maxstat.test(Surv(time, status01) ~ v, data = d, smethod = "LogRank",
    #                             pmethod = "Lau92", minprop = 0.1, maxprop = 0.9)
    m <- maxstat::maxstat.test(as.formula(paste("Surv(time, status01) ~", v)), data = d,
                               smethod = "LogRank", pmethod = "Lau92", minprop = 0.1, maxprop = 0.9)
    ms_rows[[length(ms_rows) + 1]] <- data.frame(dataset = "lung", variable = v, minprop = 0.1,
      statistic = unname(m$statistic), cutpoint = unname(m$estimate), p_lau92 = m$p.value)
    curve_rows[[length(curve_rows) + 1]] <- data.frame(dataset = "lung", variable = v, cut = m$cuts, stat = m$stats)
  }
  write_table(do.call(rbind, ms_rows), "maxstat.csv")
  write_table(do.call(rbind, curve_rows), "maxstat_curve.csv")
}

writeLines(c(R.version.string, paste("survival", as.character(packageVersion("survival"))),
             if (requireNamespace("maxstat", quietly = TRUE)) paste("maxstat", as.character(packageVersion("maxstat")))),
           file.path(out, "VERSIONS.txt"))
